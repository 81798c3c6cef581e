//! The HPACK decoder of the h2 crate (<https://github.com/hyperium/h2>, MIT),
//! vendored for herald: herald's own HTTP/2 server decodes request header
//! blocks with it. The files under `src/hpack/` and `src/ext.rs` are upstream's
//! (the release in `UPSTREAM`) with `herald.patch` applied, written by
//! `vendor/update-h2-hpack.sh`; this file is herald's. See README.md.

// As upstream's lib.rs, and `Header::len` is public here (the module is private in h2).
#![allow(
    clippy::type_complexity,
    clippy::manual_range_contains,
    clippy::len_without_is_empty
)]

// Upstream's files as they are: rustfmt leaves them to upstream's formatting,
// so that `update-h2-hpack.sh --check` keeps matching.
#[rustfmt::skip]
mod ext;
#[rustfmt::skip]
#[allow(dead_code)] // BytesStr::into_inner, for parts of h2 not vendored
pub mod hpack;

pub use ext::Protocol;
pub use hpack::{BytesStr, Decoder, DecoderError, Header, NeedMore};

/// What `hpack/decoder.rs` uses of h2's `frame` module: its frame error, into
/// which it converts a `DecoderError`.
mod frame {
    #[allow(dead_code)]
    #[derive(Debug)]
    pub enum Error {
        Hpack(crate::hpack::DecoderError),
    }
}
