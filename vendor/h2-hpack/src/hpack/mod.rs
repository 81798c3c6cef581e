// herald: only the decoder is vendored (vendor/h2-hpack): the encoder, its
// table and the fixture and fuzz tests (which need the encoder and files not
// in the published crate) are left out.
mod decoder;
pub(crate) mod header;
pub(crate) mod huffman;

pub use self::decoder::{Decoder, DecoderError, NeedMore};
pub use self::header::{BytesStr, Header};
