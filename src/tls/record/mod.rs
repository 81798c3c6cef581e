//! herald's own TLS record layer, once rustls has made the handshake.
//!
//! rustls makes the handshake (and, on HTTP/1.1, reads the first request head).
//! Then herald takes the session's keys out of rustls (the secret extraction
//! meant for kTLS; this kernel has no kTLS) and drops the rest of the rustls
//! connection, its buffers and its state machine with it: [`RecordTx`] seals
//! what herald sends, [`RecordRx`] opens what the client sends (an HTTP/2
//! connection keeps one; a lean HTTP/1.1 stream keeps only what derives one,
//! [`super::lean::LeanTls`]).
//!
//! Sealing is RFC 8446 §5.2 (TLS 1.3: the inner content type after the plaintext,
//! the record header as additional data) and RFC 5246 §6.2.3.3 with RFC 5288 /
//! RFC 7905 (TLS 1.2: the sequence number, type, version and length as additional
//! data; AES-GCM carries an explicit nonce). The nonce is the IV XOR the sequence
//! number in every case, as rustls builds it, so the records continue the
//! sequence rustls started.
//!
//! Key updates (TLS 1.3, RFC 8446 §4.6.3): a KeyUpdate from the client switches
//! [`RecordRx`] to the client's next key ([`Opened::KeyUpdate`]); when the
//! client asks for one in return, [`RecordTx::request_update`] makes the next
//! seal begin with herald's own KeyUpdate(update_not_requested), sealed under
//! the old key, after which herald seals with its next key from sequence 0.
//! The traffic secrets behind the keys come from the handshake
//! ([`super::keys`]); at the hand-off the keys derived from them are checked
//! against the ones rustls gives.
//!
//! The AEAD limit (RFC 8446 §5.5): an AES-GCM key seals at most
//! `confidentiality_limit` records of the negotiated suite (2^24 with ring;
//! ChaCha20-Poly1305 has none that matters). On TLS 1.3 herald updates its key
//! before then: the KeyUpdate takes the last record of the old key, so a stream
//! can live forever. TLS 1.2 has no key update: data stops one record before
//! the limit, so that `close_notify` can still be sealed, and the stream ends
//! cleanly ([`SealError::KeyExhausted`]; its client resumes on a new session).
//!
//! Test hook: the environment variable `HERALD_TEST_TLS_RECORD_LIMIT` (read
//! once, at start) lowers the limit for every suite to that many records (at
//! least 16), so that a test crosses it in a few hundred records. It is not a
//! setting: production leaves it unset.
//!
//! What is received is checked as RFC 8446 §5 and §6 ask: records larger than
//! the version allows (TLS 1.3: 2^14+256 of ciphertext, 2^14 of plaintext) are
//! `record_overflow`; a record that does not open is `bad_record_mac`; more
//! than 32 records in a row without application data (empty ones, key updates)
//! are `unexpected_message`, as is any handshake message other than a whole
//! KeyUpdate ending its record (a NewSessionTicket from a client, a message
//! split across records, a TLS 1.2 renegotiation). herald then seals that fatal
//! alert ([`RecordTx::fatal_alert`]) and closes.

use std::io::IoSlice;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};

use super::keys::{Aead, Captured, Material, TrafficSecret};

/// The largest plaintext of one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Bytes a record adds to its plaintext at most: header, explicit nonce or
/// inner content type, tag.
pub const MAX_OVERHEAD: usize = 5 + 8 + 16;
/// The largest ciphertext of a TLS 1.3 record (RFC 8446 §5.2).
const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// The largest ciphertext of a TLS 1.2 record (RFC 5246 §6.2.3).
const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;
/// The largest record a peer may send: its header, a full plaintext and the
/// most expansion TLS 1.2 allows (TLS 1.3's 256 is less).
pub const MAX_RECORD: usize = 5 + MAX_CIPHERTEXT_TLS12;

const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
const APPLICATION_DATA: u8 = 0x17;
/// The handshake type of KeyUpdate (RFC 8446 §4).
const KEY_UPDATE: u8 = 24;
/// Records in a row without application data (empty ones, key updates) that
/// a peer may send, as rustls allows.
const MAX_IDLE_RECORDS: u8 = 32;
/// Key generations a client may have moved on by before the hand-off.
const MAX_GENERATIONS: usize = 8;

/// The environment variable of the record limit's test hook (module doc).
pub const TEST_LIMIT_VAR: &str = "HERALD_TEST_TLS_RECORD_LIMIT";
/// The lowest limit the hook sets: a KeyUpdate and data fit under each key, and
/// the records rustls sealed before the hand-off (its session tickets) too.
const MIN_TEST_LIMIT: u64 = 16;

/// The record limit the test hook sets, if any (read once).
pub fn test_record_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let n: u64 = std::env::var(TEST_LIMIT_VAR).ok()?.trim().parse().ok()?;
        Some(n.max(MIN_TEST_LIMIT))
    })
}

/// Records one key of each AEAD ([`Aead`] as index) may seal: the lowest
/// `confidentiality_limit` of the suites negotiated with that AEAD so far
/// (every connection's suite lowers it at its hand-off, so no key is used past
/// its own suite's limit; herald's one provider gives every suite of an AEAD
/// the same), or the test hook's. Kept here rather than in each [`RecordTx`],
/// which has no 8 bytes to spare.
static LIMITS: [AtomicU64; 3] = [const { AtomicU64::new(u64::MAX) }; 3];

#[cfg(test)]
thread_local! {
    /// A lower limit for the records sealed on this thread (unit tests).
    static THREAD_LIMIT: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

fn limit_of(aead: Aead) -> u64 {
    let limit = LIMITS[aead as usize].load(Ordering::Relaxed);
    #[cfg(test)]
    let limit = limit.min(THREAD_LIMIT.with(|l| l.get()));
    limit
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tls13,
    /// TLS 1.2 AES-GCM: an explicit 8-byte nonce in every record.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: no explicit nonce.
    Tls12ChaCha,
}

/// The fatal alerts herald sends (RFC 8446 §6.2), then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fatal {
    UnexpectedMessage = 10,
    BadRecordMac = 20,
    RecordOverflow = 22,
    IllegalParameter = 47,
    DecodeError = 50,
}

/// Why a record cannot be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// The key has sealed all the records it may (TLS 1.2: no key update
    /// exists): only `close_notify` or a fatal alert can still be sealed.
    KeyExhausted,
    /// A plaintext larger than one record.
    TooLarge,
    /// The AEAD refused (not expected with records of at most 16 KiB).
    Crypto,
}

/// A record that cannot be taken: the connection ends with this fatal alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRecord(pub Fatal);

/// What one received record was.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: this range of the record buffer is its plaintext
    /// (possibly empty).
    Data(Range<usize>),
    /// A TLS 1.3 KeyUpdate: the receiving key is already the next one. When
    /// `requested`, herald must send its own before its next application data
    /// ([`RecordTx::request_update`]).
    KeyUpdate { requested: bool },
    /// An alert with this description (`close_notify` is 0, any other is
    /// fatal in TLS 1.3): the peer is done.
    Alert(u8),
}

/// A ring key for `aead` from `key`, which is the algorithm's length.
fn less_safe(aead: Aead, key: &[u8]) -> LessSafeKey {
    let unbound =
        UnboundKey::new(aead.ring(), key).expect("a key of the suite's length (Aead::key_len)");
    LessSafeKey::new(unbound)
}

/// The key and IV of a TLS 1.3 traffic secret, as a ring key.
fn traffic_key(aead: Aead, secret: &Material) -> (LessSafeKey, [u8; 12]) {
    let mut key = Material::EMPTY;
    let iv = TrafficSecret { aead, secret }.key_iv(&mut key);
    (less_safe(aead, &key.0[..aead.key_len()]), iv)
}

/// The sealing state of one connection: an AEAD key (ring), the IV, the
/// sequence number, on TLS 1.3 the traffic secret the next key derives from,
/// and no buffer (what the kernel has not taken of a write is its owner's:
/// [`super::lean::LeanTls::pending`], an HTTP/2 connection's).
pub struct RecordTx {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    kind: Kind,
    aead: Aead,
    /// A KeyUpdate(update_not_requested) goes out before the next record.
    update: bool,
    /// TLS 1.3: the traffic secret of `key`.
    secret: Material,
}

impl RecordTx {
    /// Records one key may seal.
    fn limit(&self) -> u64 {
        limit_of(self.aead)
    }

    /// The client asked for a key update (TLS 1.3): the next seal begins with
    /// herald's KeyUpdate, then herald seals with its next key.
    pub fn request_update(&mut self) {
        if self.kind == Kind::Tls13 {
            self.update = true;
        }
    }

    /// A KeyUpdate is due before anything else is sealed.
    pub fn update_pending(&self) -> bool {
        self.update
    }

    /// Seal `plaintext` (at most [`MAX_PLAINTEXT`] bytes) as one application-data
    /// record appended to `out` (after a KeyUpdate if one is due).
    pub fn seal(&mut self, out: &mut Vec<u8>, plaintext: &[u8]) -> Result<(), SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLarge);
        }
        self.before_data(out, 1)?;
        self.rotate_if_due(out)?;
        self.seal_with(out, APPLICATION_DATA, |o| o.extend_from_slice(plaintext))
    }

    /// Seal the `close_notify` alert (the stream ends cleanly, not truncated).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        // Level warning (1), description close_notify (0).
        self.seal_with(out, ALERT, |o| o.extend_from_slice(&[1, 0]))
    }

    /// Seal a fatal alert (level 2); the connection is closed after it.
    pub fn fatal_alert(&mut self, out: &mut Vec<u8>, alert: Fatal) -> Result<(), SealError> {
        self.seal_with(out, ALERT, |o| o.extend_from_slice(&[2, alert as u8]))
    }

    /// Seal the KeyUpdate that is due, if one is, with no data after it; true
    /// when it was.
    pub fn seal_update(&mut self, out: &mut Vec<u8>) -> Result<bool, SealError> {
        if !self.update {
            return Ok(false);
        }
        self.key_update(out)?;
        Ok(true)
    }

    /// Seal up to `budget` bytes of `chunks` (in order, as records of at most
    /// [`MAX_PLAINTEXT`]) into `out`; returns how many plaintext bytes it took.
    /// Frames are coalesced: one record, one seal, for everything a flush has for
    /// the stream when it fits. A KeyUpdate that is due goes first, even with
    /// no data; on TLS 1.3 one also goes before the record that would be the
    /// key's last. On TLS 1.2 a write that would take the key's last record is
    /// refused whole ([`SealError::KeyExhausted`]; nothing is sealed).
    pub fn seal_chunks(
        &mut self,
        out: &mut Vec<u8>,
        chunks: &[IoSlice<'_>],
        budget: usize,
    ) -> Result<usize, SealError> {
        let total = chunks.iter().map(|c| c.len()).sum::<usize>().min(budget);
        self.before_data(out, total.div_ceil(MAX_PLAINTEXT) as u64)?;
        let mut taken = 0;
        let (mut i, mut off) = (0, 0);
        while taken < total {
            self.rotate_if_due(out)?;
            let room = MAX_PLAINTEXT.min(total - taken);
            let mut filled = 0;
            self.seal_with(out, APPLICATION_DATA, |o| {
                while filled < room {
                    let chunk = &chunks[i][off..];
                    let n = chunk.len().min(room - filled);
                    o.extend_from_slice(&chunk[..n]);
                    filled += n;
                    off += n;
                    if off == chunks[i].len() {
                        i += 1;
                        off = 0;
                    }
                }
            })?;
            taken += filled;
        }
        Ok(taken)
    }

    /// Before `records` records of data: a KeyUpdate that is due (TLS 1.3), or
    /// the check that they leave the key's last record for `close_notify`
    /// (TLS 1.2).
    fn before_data(&mut self, out: &mut Vec<u8>, records: u64) -> Result<(), SealError> {
        match self.kind {
            Kind::Tls13 if self.update => self.key_update(out),
            Kind::Tls13 => Ok(()),
            _ if records > 0 && self.seq.saturating_add(records) >= self.limit() => {
                Err(SealError::KeyExhausted)
            }
            _ => Ok(()),
        }
    }

    /// TLS 1.3: a KeyUpdate before the next data record when one is due or
    /// when that record would be the key's last.
    fn rotate_if_due(&mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        if self.kind == Kind::Tls13 && (self.update || self.seq.saturating_add(1) >= self.limit()) {
            self.key_update(out)?;
        }
        Ok(())
    }

    /// KeyUpdate(update_not_requested) under the current key, then the next
    /// generation's key from sequence 0 (RFC 8446 §4.6.3, §7.2).
    fn key_update(&mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        self.update_keys(out, false)
    }

    /// A KeyUpdate saying `requested`, then the next key.
    fn update_keys(&mut self, out: &mut Vec<u8>, requested: bool) -> Result<(), SealError> {
        self.seal_with(out, HANDSHAKE, |o| {
            o.extend_from_slice(&[KEY_UPDATE, 0, 0, 1, u8::from(requested)])
        })?;
        let next = TrafficSecret {
            aead: self.aead,
            secret: &self.secret,
        }
        .next();
        let (key, iv) = traffic_key(self.aead, &next);
        self.key = key;
        self.iv = iv;
        self.secret = next;
        self.seq = 0;
        self.update = false;
        Ok(())
    }

    /// Seal `plaintext` as one record of `content_type`, with `pad` zeros of
    /// TLS 1.3 padding, as a peer may send it: the client of the property
    /// tests and of the fuzz target ([`fixed_pair`]). herald itself seals
    /// through the methods above.
    #[doc(hidden)]
    pub fn seal_raw(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        plaintext: &[u8],
        pad: usize,
    ) -> Result<(), SealError> {
        self.seal_padded(out, content_type, pad, |o| o.extend_from_slice(plaintext))
    }

    /// A KeyUpdate as a peer sends it, then the next key ([`fixed_pair`]).
    #[doc(hidden)]
    pub fn seal_key_update(&mut self, out: &mut Vec<u8>, requested: bool) -> Result<(), SealError> {
        if self.kind != Kind::Tls13 {
            return Err(SealError::Crypto);
        }
        self.update_keys(out, requested)
    }

    /// Append one record of `content_type` whose plaintext `fill` writes; on
    /// error `out` is as it was.
    fn seal_with(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SealError> {
        self.seal_padded(out, content_type, 0, fill)
    }

    /// [`RecordTx::seal_with`], with `pad` zeros after a TLS 1.3 record's
    /// inner content type (RFC 8446 §5.4; herald sends none).
    fn seal_padded(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        pad: usize,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SealError> {
        if self.seq >= self.limit() {
            return Err(SealError::KeyExhausted);
        }
        let seq = self.seq;
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let start = out.len();
        let outer_type = match self.kind {
            Kind::Tls13 => APPLICATION_DATA,
            _ => content_type,
        };
        // TLS 1.2 and 1.3 records both say 0x0303 (RFC 8446 §5.1).
        out.extend_from_slice(&[outer_type, 3, 3, 0, 0]);
        if self.kind == Kind::Tls12Gcm {
            out.extend_from_slice(&nonce[4..]);
        }
        let body = out.len();
        fill(out);
        let plain_len = out.len() - body;
        if plain_len > MAX_PLAINTEXT {
            out.truncate(start);
            return Err(SealError::TooLarge);
        }
        if self.kind == Kind::Tls13 {
            out.push(content_type);
            out.resize(out.len() + pad, 0);
        }
        let tag_len = self.key.algorithm().tag_len();
        let record_len = out.len() - start - 5 + tag_len;
        out[start + 3..start + 5].copy_from_slice(&(record_len as u16).to_be_bytes());
        let nonce = Nonce::assume_unique_for_key(nonce);
        let tag = match self.kind {
            Kind::Tls13 => {
                let mut header = [0u8; 5];
                header.copy_from_slice(&out[start..start + 5]);
                self.key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[body..])
            }
            Kind::Tls12Gcm | Kind::Tls12ChaCha => {
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&seq.to_be_bytes());
                aad[8] = content_type;
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
                self.key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[body..])
            }
        };
        let Ok(tag) = tag else {
            // Nothing of the plaintext stays behind.
            out.truncate(start);
            return Err(SealError::Crypto);
        };
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(())
    }
}

mod handoff;
mod rx;
#[cfg(test)]
pub(crate) mod tests;

pub use handoff::{fixed_pair, take_both};
pub(crate) use handoff::{fixed_state, hand_off};
pub use rx::RecordRx;
pub(crate) use rx::RxState;
