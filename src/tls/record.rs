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
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConnection, SupportedCipherSuite};
use subtle::ConstantTimeEq;

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
/// and a buffer only while the kernel has not taken a whole write.
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
    /// Sealed bytes the kernel has not taken yet (empty, unallocated, when the
    /// stream is caught up): written before anything newer.
    pub pending: Vec<u8>,
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
        self.seal_with(out, HANDSHAKE, |o| {
            o.extend_from_slice(&[KEY_UPDATE, 0, 0, 1, 0])
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

    /// Append one record of `content_type` whose plaintext `fill` writes; on
    /// error `out` is as it was.
    fn seal_with(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
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

/// The receiving state without its key: what a lean stream keeps while idle.
#[derive(Clone)]
pub(crate) struct RxState {
    /// TLS 1.3: the client's traffic secret; TLS 1.2: the key, then the IV.
    material: Material,
    seq: u64,
    kind: Kind,
    aead: Aead,
    /// Records in a row without application data.
    idle: u8,
}

impl RxState {
    /// The ring key and IV of this state's generation.
    fn keys(&self) -> (LessSafeKey, [u8; 12]) {
        match self.kind {
            Kind::Tls13 => traffic_key(self.aead, &self.material),
            _ => {
                let n = self.aead.key_len();
                let mut iv = [0u8; 12];
                iv.copy_from_slice(&self.material.0[n..n + 12]);
                (less_safe(self.aead, &self.material.0[..n]), iv)
            }
        }
    }
}

/// The receiving half of a connection whose records herald opens itself: the
/// peer's key, IV and sequence number.
pub struct RecordRx {
    key: LessSafeKey,
    iv: [u8; 12],
    state: RxState,
}

impl RecordRx {
    pub(crate) fn from_state(state: RxState) -> RecordRx {
        let (key, iv) = state.keys();
        RecordRx { key, iv, state }
    }

    pub(crate) fn into_state(self) -> RxState {
        self.state
    }

    /// The length of the whole record at the start of `buf` (header included)
    /// once its header is there; an error for a record no peer may send.
    pub fn record_len(buf: &[u8]) -> Option<Result<usize, BadRecord>> {
        let header = buf.get(..5)?;
        let len = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[1] != 3 {
            return Some(Err(BadRecord(Fatal::DecodeError)));
        }
        if len > MAX_RECORD {
            return Some(Err(BadRecord(Fatal::RecordOverflow)));
        }
        Some(Ok(len))
    }

    /// Open the whole record `record` (header included) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, BadRecord> {
        let fatal = |f| Err(BadRecord(f));
        let kind = self.state.kind;
        if record.len() < 5 {
            return fatal(Fatal::DecodeError);
        }
        let outer_type = record[0];
        let max = match kind {
            Kind::Tls13 => MAX_CIPHERTEXT_TLS13,
            _ => MAX_CIPHERTEXT_TLS12,
        };
        if record.len() - 5 > max {
            return fatal(Fatal::RecordOverflow);
        }
        let expected = match kind {
            Kind::Tls13 => outer_type == APPLICATION_DATA,
            _ => matches!(outer_type, APPLICATION_DATA | ALERT),
        };
        if !expected {
            // TLS 1.3: anything but a protected record; TLS 1.2: a handshake
            // (a renegotiation), a ChangeCipherSpec, an unknown type.
            return fatal(Fatal::UnexpectedMessage);
        }
        let mut nonce = self.iv;
        let body_start = match kind {
            Kind::Tls12Gcm => {
                // The explicit nonce follows the header (RFC 5288 §3).
                let Some(explicit) = record.get(5..13) else {
                    return fatal(Fatal::BadRecordMac);
                };
                nonce[4..].copy_from_slice(explicit);
                13
            }
            _ => {
                for (n, s) in nonce[4..].iter_mut().zip(self.state.seq.to_be_bytes()) {
                    *n ^= s;
                }
                5
            }
        };
        let tag_len = self.key.algorithm().tag_len();
        let Some(cipher_len) = record.len().checked_sub(body_start + tag_len) else {
            return fatal(Fatal::BadRecordMac);
        };
        let nonce = Nonce::assume_unique_for_key(nonce);
        let (header, body) = record.split_at_mut(body_start);
        let (content_type, len) = match kind {
            Kind::Tls13 => {
                let mut aad = [0u8; 5];
                aad.copy_from_slice(&header[..5]);
                let Ok(plain) = self.key.open_in_place(nonce, Aad::from(aad), body) else {
                    return fatal(Fatal::BadRecordMac);
                };
                // The inner content type is the last byte that is not padding
                // (RFC 8446 §5.4).
                let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                    return fatal(Fatal::UnexpectedMessage);
                };
                (plain[end], end)
            }
            Kind::Tls12Gcm | Kind::Tls12ChaCha => {
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.state.seq.to_be_bytes());
                aad[8] = outer_type;
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&(cipher_len as u16).to_be_bytes());
                if self.key.open_in_place(nonce, Aad::from(aad), body).is_err() {
                    return fatal(Fatal::BadRecordMac);
                }
                (outer_type, cipher_len)
            }
        };
        if len > MAX_PLAINTEXT {
            return fatal(Fatal::RecordOverflow);
        }
        self.state.seq += 1;
        let plain = body_start..body_start + len;
        match content_type {
            APPLICATION_DATA if len == 0 => {
                self.idle_record()?;
                Ok(Opened::Data(plain))
            }
            APPLICATION_DATA => {
                self.state.idle = 0;
                Ok(Opened::Data(plain))
            }
            ALERT if len == 2 => Ok(Opened::Alert(record[plain.start + 1])),
            ALERT => fatal(Fatal::DecodeError),
            HANDSHAKE if kind == Kind::Tls13 => {
                let requested = key_update(&record[plain])?;
                self.idle_record()?;
                self.next_key();
                Ok(Opened::KeyUpdate { requested })
            }
            _ => fatal(Fatal::UnexpectedMessage),
        }
    }

    /// One more record without application data.
    fn idle_record(&mut self) -> Result<(), BadRecord> {
        self.state.idle += 1;
        if self.state.idle > MAX_IDLE_RECORDS {
            return Err(BadRecord(Fatal::UnexpectedMessage));
        }
        Ok(())
    }

    /// The client's next key, from sequence 0 (RFC 8446 §7.2).
    fn next_key(&mut self) {
        self.state.material = TrafficSecret {
            aead: self.state.aead,
            secret: &self.state.material,
        }
        .next();
        (self.key, self.iv) = self.state.keys();
        self.state.seq = 0;
    }
}

/// The handshake messages of one TLS 1.3 record after the handshake: exactly
/// one KeyUpdate, which ends the record (RFC 8446 §5.1: a message before a key
/// change must end its record). Whether the peer asks for an update back.
fn key_update(msgs: &[u8]) -> Result<bool, BadRecord> {
    let fatal = |f| Err(BadRecord(f));
    let Some(&[typ, a, b, c]) = msgs.get(..4) else {
        // Part of a message header: a message split across records.
        return fatal(Fatal::UnexpectedMessage);
    };
    if typ != KEY_UPDATE {
        // NewSessionTicket (servers send those), a renegotiation, anything.
        return fatal(Fatal::UnexpectedMessage);
    }
    let len = u32::from_be_bytes([0, a, b, c]) as usize;
    if msgs.len() - 4 < len {
        return fatal(Fatal::UnexpectedMessage);
    }
    if len != 1 {
        return fatal(Fatal::DecodeError);
    }
    if msgs.len() > 5 {
        // More after the KeyUpdate: it does not end its record.
        return fatal(Fatal::UnexpectedMessage);
    }
    match msgs[4] {
        0 => Ok(false),
        1 => Ok(true),
        // RFC 8446 §4.6.3.
        _ => fatal(Fatal::IllegalParameter),
    }
}

/// Both directions as rustls hands them over.
pub(crate) struct Handoff {
    pub(crate) tx: RecordTx,
    pub(crate) rx: RxState,
}

/// Take the keys of a connection whose handshake is complete, whose outgoing
/// records are all written (a KeyUpdate rustls owes included) and which holds
/// no part of a record received (see [`super::WholeRecords`]); the connection
/// is consumed. On TLS 1.3 the traffic secrets `captured` during its handshake
/// are advanced to the generation of the keys rustls gives (the client may
/// have updated its keys, and rustls its own in answer, before now); none
/// matching is an error.
pub(crate) fn hand_off(conn: ServerConnection, captured: &Captured) -> Result<Handoff, String> {
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let suite_limit = match conn.negotiated_cipher_suite() {
        Some(SupportedCipherSuite::Tls13(s)) => s.common.confidentiality_limit,
        Some(SupportedCipherSuite::Tls12(s)) => s.common.confidentiality_limit,
        None => return Err("no cipher suite negotiated".into()),
    };
    let limit = suite_limit.min(test_record_limit().unwrap_or(u64::MAX));
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| e.to_string())?;
    let (tx_seq, tx) = secrets.tx;
    let (rx_seq, rx) = secrets.rx;
    let aead = Aead::of(&tx).ok_or("unsupported cipher suite")?;
    LIMITS[aead as usize].fetch_min(limit, Ordering::Relaxed);
    let (tx_key, tx_iv) = key_iv(&tx, aead)?;
    let (rx_key, rx_iv) = key_iv(&rx, aead)?;
    let kind = match (tls13, aead) {
        (true, _) => Kind::Tls13,
        (false, Aead::Chacha20Poly1305) => Kind::Tls12ChaCha,
        (false, _) => Kind::Tls12Gcm,
    };
    let (tx_secret, rx_material) = if tls13 {
        (
            generation_of(captured.server(), aead, tx_key, &tx_iv)?,
            generation_of(captured.client(), aead, rx_key, &rx_iv)?,
        )
    } else {
        // No key update exists: no secret is kept; the receiving key itself is
        // (a lean stream makes its ring key from it when input comes).
        let mut m = Material::EMPTY;
        m.0[..rx_key.len()].copy_from_slice(rx_key);
        m.0[rx_key.len()..rx_key.len() + 12].copy_from_slice(&rx_iv);
        (Material::EMPTY, m)
    };
    let tx = RecordTx {
        key: less_safe(aead, tx_key),
        iv: tx_iv,
        seq: tx_seq,
        kind,
        aead,
        update: false,
        secret: tx_secret,
        pending: Vec::new(),
    };
    let rx = RxState {
        material: rx_material,
        seq: rx_seq,
        kind,
        aead,
        idle: 0,
    };
    Ok(Handoff { tx, rx })
}

/// The key (of `aead`'s length) and IV of one direction.
fn key_iv(secrets: &ConnectionTrafficSecrets, aead: Aead) -> Result<(&[u8], [u8; 12]), String> {
    let (key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref(), iv.as_ref()),
        _ => return Err("unsupported cipher suite".into()),
    };
    if Aead::of(secrets) != Some(aead) || key.len() != aead.key_len() {
        return Err("bad key length".into());
    }
    let iv: [u8; 12] = iv.try_into().map_err(|_| "bad IV length")?;
    Ok((key, iv))
}

/// The generation of the captured traffic secret (generation 0) whose key and
/// IV are `key` and `iv`.
fn generation_of(
    captured: Option<(&Material, usize)>,
    aead: Aead,
    key: &[u8],
    iv: &[u8; 12],
) -> Result<Material, String> {
    let (secret, len) = captured.ok_or("the handshake's traffic secrets were not captured")?;
    if len != aead.secret_len() {
        return Err("a captured traffic secret of the wrong length".into());
    }
    let mut secret = secret.clone();
    for _ in 0..=MAX_GENERATIONS {
        let mut k = Material::EMPTY;
        let i = TrafficSecret {
            aead,
            secret: &secret,
        }
        .key_iv(&mut k);
        if bool::from(k.0[..aead.key_len()].ct_eq(key) & i.ct_eq(iv)) {
            return Ok(secret);
        }
        secret = TrafficSecret {
            aead,
            secret: &secret,
        }
        .next();
    }
    Err("no generation of the captured traffic secret gives rustls' key".into())
}

/// Take both keys of a connection ([`hand_off`]), for a connection that
/// reads and writes records (HTTP/2).
pub fn take_both(
    conn: ServerConnection,
    captured: &Captured,
) -> Result<(Box<RecordTx>, Box<RecordRx>), String> {
    let h = hand_off(conn, captured)?;
    Ok((Box::new(h.tx), Box::new(RecordRx::from_state(h.rx))))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConnection, SupportedCipherSuite};

    use super::*;
    use crate::tls::keys::{capturing, CaptureLog};

    /// A server and a client configuration offering only `suite` (herald's
    /// key log on the server's).
    fn configs(suite: SupportedCipherSuite) -> (rustls::ServerConfig, rustls::ClientConfig) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![suite];
        let provider = Arc::new(provider);
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server_cfg.enable_secret_extraction = true;
        server_cfg.key_log = Arc::new(CaptureLog);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server_cfg, client_cfg)
    }

    /// A client and a server that completed a handshake in memory with `suite`,
    /// the server's outgoing records all delivered to the client, and the
    /// traffic secrets captured from the server's handshake.
    pub(crate) fn pair(
        suite: SupportedCipherSuite,
    ) -> (ServerConnection, ClientConnection, Captured) {
        let (server_cfg, client_cfg) = configs(suite);
        let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut client = ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut captured = Captured::default();
        // The server sends some data through rustls first, so the extracted
        // sequence number is not zero.
        server.writer().write_all(b"from rustls").unwrap();
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            server.read_tls(&mut &buf[..]).unwrap();
            capturing(&mut captured, || server.process_new_packets()).unwrap();
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                break;
            }
        }
        let mut got = [0u8; 11];
        client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"from rustls");
        (server, client, captured)
    }

    pub(crate) fn read_all(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            client.process_new_packets().unwrap();
            while let Ok(n @ 1..) = client.reader().read(&mut chunk) {
                got.extend_from_slice(&chunk[..n]);
            }
        }
        got
    }

    /// What the client has to send, as records.
    pub(crate) fn client_wire(client: &mut ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Every suite of the ring provider a P-256 certificate (rcgen's) can use:
    /// TLS 1.3's three, TLS 1.2's ECDHE-ECDSA ones.
    pub(crate) fn every_suite() -> Vec<SupportedCipherSuite> {
        rustls::crypto::ring::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| !format!("{:?}", s.suite()).contains("_RSA_"))
            .collect()
    }

    pub(crate) fn tls13_suites() -> Vec<SupportedCipherSuite> {
        let all = every_suite();
        let v: Vec<_> = all
            .into_iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .collect();
        assert_eq!(v.len(), 3);
        v
    }

    fn tls12_suites() -> Vec<SupportedCipherSuite> {
        every_suite()
            .into_iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .collect()
    }

    fn tx_of(server: ServerConnection, captured: &Captured) -> RecordTx {
        hand_off(server, captured).unwrap().tx
    }

    /// Lower the record limit for what this test thread seals.
    pub(crate) fn lower_limit(n: u64) {
        THREAD_LIMIT.with(|l| l.set(n));
    }

    #[test]
    fn rustls_clients_read_what_herald_seals_with_every_suite() {
        // Three TLS 1.3 suites and three TLS 1.2 ones (both nonce layouts).
        assert_eq!(every_suite().len(), 6);
        for suite in every_suite() {
            let (server, mut client, captured) = pair(suite);
            let mut tx = tx_of(server, &captured);
            let mut wire = Vec::new();
            tx.seal(&mut wire, b"id: 1\ndata: one\n\n").unwrap();
            let big = vec![b'x'; 40_000];
            let chunks = [
                IoSlice::new(b"id: 2\n"),
                IoSlice::new(&big),
                IoSlice::new(b""),
                IoSlice::new(b"\n\n"),
            ];
            let taken = tx.seal_chunks(&mut wire, &chunks, usize::MAX).unwrap();
            assert_eq!(taken, 6 + 40_000 + 2);
            // Nothing to seal, no key update due: no record.
            let before = wire.len();
            assert_eq!(tx.seal_chunks(&mut wire, &[IoSlice::new(b"")], 100), Ok(0));
            assert_eq!(wire.len(), before);
            let got = read_all(&mut client, &wire);
            let mut want = b"id: 1\ndata: one\n\nid: 2\n".to_vec();
            want.extend_from_slice(&big);
            want.extend_from_slice(b"\n\n");
            assert_eq!(got, want, "{suite:?}");
        }
    }

    #[test]
    fn a_budget_stops_mid_chunk_and_the_rest_follows() {
        let (server, mut client, captured) = pair(every_suite()[0]);
        let mut tx = tx_of(server, &captured);
        let chunks = [IoSlice::new(b"abcdef"), IoSlice::new(b"ghij")];
        let mut wire = Vec::new();
        assert_eq!(tx.seal_chunks(&mut wire, &chunks, 4).unwrap(), 4);
        let rest = [IoSlice::new(b"ef"), IoSlice::new(b"ghij")];
        assert_eq!(tx.seal_chunks(&mut wire, &rest, 100).unwrap(), 6);
        assert_eq!(read_all(&mut client, &wire), b"abcdefghij");
    }

    #[test]
    fn close_notify_ends_the_stream_cleanly() {
        for suite in every_suite() {
            let (server, mut client, captured) = pair(suite);
            let mut tx = tx_of(server, &captured);
            let mut wire = Vec::new();
            tx.seal(&mut wire, b"last").unwrap();
            tx.close_notify(&mut wire).unwrap();
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            let mut got = Vec::new();
            // A clean close: the reader ends (Ok), it does not report truncation.
            client.reader().read_to_end(&mut got).unwrap();
            assert_eq!(got, b"last", "{suite:?}");
        }
    }

    #[test]
    fn a_fatal_alert_reaches_the_client() {
        for suite in every_suite() {
            let (server, mut client, captured) = pair(suite);
            let mut tx = tx_of(server, &captured);
            let mut wire = Vec::new();
            tx.fatal_alert(&mut wire, Fatal::RecordOverflow).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            let err = client.process_new_packets().unwrap_err();
            assert_eq!(
                err,
                rustls::Error::AlertReceived(rustls::AlertDescription::RecordOverflow),
                "{suite:?}"
            );
        }
    }

    /// Split `wire` into whole records and open each with `rx`: the data, the
    /// alerts and the key updates seen.
    fn open_all(rx: &mut RecordRx, mut wire: Vec<u8>) -> (Vec<u8>, Vec<u8>, Vec<bool>) {
        let (mut got, mut alerts, mut updates) = (Vec::new(), Vec::new(), Vec::new());
        while !wire.is_empty() {
            let len = RecordRx::record_len(&wire).unwrap().unwrap();
            let mut rest = wire.split_off(len);
            std::mem::swap(&mut rest, &mut wire);
            match rx.open(&mut rest).unwrap() {
                Opened::Data(r) => got.extend_from_slice(&rest[r]),
                Opened::Alert(a) => alerts.push(a),
                Opened::KeyUpdate { requested } => updates.push(requested),
            }
        }
        (got, alerts, updates)
    }

    #[test]
    fn herald_opens_what_rustls_clients_seal_with_every_suite() {
        for suite in every_suite() {
            let (server, mut client, captured) = pair(suite);
            // The client's first record goes through rustls, so the sequence
            // number extracted is not zero.
            client.writer().write_all(b"early").unwrap();
            let wire = client_wire(&mut client);
            let mut server = server;
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut early = [0u8; 5];
            server.reader().read_exact(&mut early).unwrap();
            let (_tx, mut rx) = take_both(server, &captured).unwrap();
            let big = vec![b'y'; 40_000];
            client.writer().write_all(b"PRI * HTTP/2.0").unwrap();
            client.writer().write_all(&big).unwrap();
            client.send_close_notify();
            let (got, alerts, _) = open_all(&mut rx, client_wire(&mut client));
            let mut want = b"PRI * HTTP/2.0".to_vec();
            want.extend_from_slice(&big);
            assert_eq!(got, want, "{suite:?}");
            assert_eq!(alerts, [0], "{suite:?}: close_notify seen");
        }
    }

    #[test]
    fn a_forged_or_replayed_record_is_refused() {
        for suite in every_suite() {
            let (server, mut client, captured) = pair(suite);
            let (_tx, mut rx) = take_both(server, &captured).unwrap();
            client.writer().write_all(b"data").unwrap();
            let wire = client_wire(&mut client);
            let mut forged = wire.clone();
            let last = forged.len() - 1;
            forged[last] ^= 1;
            let bad = Err(BadRecord(Fatal::BadRecordMac));
            assert_eq!(rx.open(&mut forged), bad, "{suite:?}");
            let mut ok = wire.clone();
            assert!(matches!(rx.open(&mut ok), Ok(Opened::Data(_))), "{suite:?}");
            // The same record again is out of sequence.
            let mut replay = wire.clone();
            assert_eq!(rx.open(&mut replay), bad, "{suite:?}");
        }
        assert_eq!(
            RecordRx::record_len(&[0x17, 3, 3, 0xff, 0xff]),
            Some(Err(BadRecord(Fatal::RecordOverflow)))
        );
        assert_eq!(
            RecordRx::record_len(&[0x17, 4, 3, 0, 1]),
            Some(Err(BadRecord(Fatal::DecodeError)))
        );
        assert_eq!(RecordRx::record_len(&[0x17, 3, 3]), None);
    }

    /// The key updates of a rustls client are followed, and answered: the
    /// client asks (`refresh_traffic_keys`), herald opens its KeyUpdate and
    /// the data after it under the client's next key, and the client reads
    /// herald's next records, which begin with herald's own KeyUpdate. Three
    /// times over, for the three TLS 1.3 suites.
    #[test]
    fn key_updates_both_ways_with_a_rustls_client() {
        for suite in tls13_suites() {
            let (server, mut client, captured) = pair(suite);
            let (mut tx, mut rx) = take_both(server, &captured).unwrap();
            for round in 0..3 {
                client.refresh_traffic_keys().unwrap();
                client.writer().write_all(b"after update").unwrap();
                let (got, _, updates) = open_all(&mut rx, client_wire(&mut client));
                assert_eq!(updates, [true], "{suite:?} round {round}");
                assert_eq!(got, b"after update");
                tx.request_update();
                assert!(tx.update_pending());
                let mut wire = Vec::new();
                tx.seal(&mut wire, b"reply").unwrap();
                assert!(!tx.update_pending());
                // The KeyUpdate under the old key, then the data at 0.
                assert_eq!(tx.seq, 1);
                assert_eq!(read_all(&mut client, &wire), b"reply", "{suite:?}");
            }
            // An update with nothing to send: the KeyUpdate alone.
            client.refresh_traffic_keys().unwrap();
            let (_, _, updates) = open_all(&mut rx, client_wire(&mut client));
            assert_eq!(updates, [true]);
            tx.request_update();
            let mut wire = Vec::new();
            assert_eq!(tx.seal_chunks(&mut wire, &[], SEAL), Ok(0));
            assert!(!wire.is_empty() && tx.seq == 0);
            tx.seal(&mut wire, b"then data").unwrap();
            assert_eq!(read_all(&mut client, &wire), b"then data");
            // The client's own update, not asked to be answered.
            client.writer().write_all(b"x").unwrap();
            let _ = client_wire(&mut client);
        }
    }

    const SEAL: usize = MAX_PLAINTEXT;

    /// TLS 1.3 keys are updated before they reach the (lowered) record limit:
    /// a rustls client reads every record, across several generations, single
    /// records and writes of several.
    #[test]
    fn tls13_keys_rotate_before_the_limit_and_rustls_clients_follow() {
        for suite in tls13_suites() {
            let (server, mut client, captured) = pair(suite);
            let mut tx = tx_of(server, &captured);
            lower_limit(20);
            let mut wire = Vec::new();
            let mut want = Vec::new();
            let mut generations = 0;
            for i in 0..100u32 {
                let before = tx.seq;
                let data = format!("event {i}\n");
                tx.seal(&mut wire, data.as_bytes()).unwrap();
                want.extend_from_slice(data.as_bytes());
                assert!(tx.seq < 20);
                if tx.seq < before {
                    generations += 1;
                }
            }
            let big = vec![b'z'; 5 * MAX_PLAINTEXT + 7];
            for _ in 0..10 {
                let n = tx
                    .seal_chunks(&mut wire, &[IoSlice::new(&big)], usize::MAX)
                    .unwrap();
                assert_eq!(n, big.len());
                want.extend_from_slice(&big);
            }
            assert!(generations >= 5, "{generations} key updates");
            tx.close_notify(&mut wire).unwrap();
            assert_eq!(read_all(&mut client, &wire), want, "{suite:?}");
            lower_limit(u64::MAX);
        }
    }

    /// TLS 1.2 has no key update: data stops one record before the limit, a
    /// write that would cross it is refused whole, and close_notify can still
    /// be sealed; the client sees a clean end.
    #[test]
    fn tls12_stops_one_record_early_and_close_notify_still_seals() {
        for suite in tls12_suites() {
            let (server, mut client, captured) = pair(suite);
            let mut tx = tx_of(server, &captured);
            lower_limit(tx.seq + 10);
            let mut wire = Vec::new();
            let mut sealed = 0;
            // Two records' worth fits while three remain, not while two do.
            let two = vec![b'w'; MAX_PLAINTEXT + 1];
            while tx.seal(&mut wire, b"x") == Ok(()) {
                sealed += 1;
                let len = wire.len();
                let left = 10 - sealed;
                let r = tx.seal_chunks(&mut wire, &[IoSlice::new(&two)], usize::MAX);
                if left >= 3 {
                    assert_eq!(r, Ok(two.len()));
                    sealed += 2;
                } else {
                    assert_eq!(r, Err(SealError::KeyExhausted));
                    assert_eq!(wire.len(), len, "nothing sealed");
                }
            }
            assert_eq!(sealed, 9, "{suite:?}");
            assert_eq!(tx.seal(&mut wire, b"x"), Err(SealError::KeyExhausted));
            tx.close_notify(&mut wire).unwrap();
            assert_eq!(
                tx.close_notify(&mut Vec::new()),
                Err(SealError::KeyExhausted)
            );
            let mut got = read_all(&mut client, &wire);
            // A clean close: the reader ends (Ok), it does not report truncation.
            client.reader().read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), 3 + 3 * two.len(), "{suite:?}");
            lower_limit(u64::MAX);
        }
    }

    #[test]
    fn seal_refuses_more_than_a_record_and_leaves_out_as_it_was() {
        let (server, _client, captured) = pair(every_suite()[0]);
        let mut tx = tx_of(server, &captured);
        let mut out = b"before".to_vec();
        let seq = tx.seq;
        assert_eq!(
            tx.seal(&mut out, &vec![0; MAX_PLAINTEXT + 1]),
            Err(SealError::TooLarge)
        );
        assert_eq!(
            tx.seal_with(&mut out, APPLICATION_DATA, |o| o
                .resize(o.len() + MAX_PLAINTEXT + 1, 0)),
            Err(SealError::TooLarge)
        );
        assert_eq!((&out[..], tx.seq), (&b"before"[..], seq));
    }

    /// A sealer with the client's keys (the same record format both ways), to
    /// send herald what rustls clients never would.
    fn client_sealer(rx: &RecordRx) -> RecordTx {
        let (key, iv) = rx.state.keys();
        RecordTx {
            key,
            iv,
            seq: rx.state.seq,
            kind: rx.state.kind,
            aead: rx.state.aead,
            update: false,
            secret: rx.state.material.clone(),
            pending: Vec::new(),
        }
    }

    /// A TLS 1.3 record of any inner plaintext (content, type, padding) under
    /// `tx`'s key.
    fn raw_record(tx: &mut RecordTx, inner: &[u8]) -> Vec<u8> {
        let mut nonce = tx.iv;
        for (n, s) in nonce[4..].iter_mut().zip(tx.seq.to_be_bytes()) {
            *n ^= s;
        }
        let len = (inner.len() + 16) as u16;
        let mut out = vec![APPLICATION_DATA, 3, 3];
        out.extend_from_slice(&len.to_be_bytes());
        let header: [u8; 5] = out[..5].try_into().unwrap();
        out.extend_from_slice(inner);
        let tag = tx
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut out[5..],
            )
            .unwrap();
        out.extend_from_slice(tag.as_ref());
        tx.seq += 1;
        out
    }

    fn tls13_rx() -> (RecordRx, RecordTx) {
        let (server, _client, captured) = pair(tls13_suites()[0]);
        let (_tx, rx) = take_both(server, &captured).unwrap();
        let client = client_sealer(&rx);
        (*rx, client)
    }

    #[test]
    fn oversized_records_are_record_overflow() {
        let overflow = Err(BadRecord(Fatal::RecordOverflow));
        // TLS 1.3 ciphertext over 2^14+256, though within TLS 1.2's bound.
        let (mut rx, mut client) = tls13_rx();
        let mut inner = vec![b'a'; MAX_PLAINTEXT];
        inner.push(APPLICATION_DATA);
        inner.resize(MAX_PLAINTEXT + 256 - 16 + 1, 0);
        let mut rec = raw_record(&mut client, &inner);
        assert_eq!(rec.len() - 5, MAX_CIPHERTEXT_TLS13 + 1);
        assert_eq!(rx.open(&mut rec), overflow);
        // A plaintext over 2^14 within the ciphertext bound.
        let (mut rx, mut client) = tls13_rx();
        let mut inner = vec![b'a'; MAX_PLAINTEXT + 1];
        inner.push(APPLICATION_DATA);
        let mut rec = raw_record(&mut client, &inner);
        assert_eq!(rx.open(&mut rec), overflow);
        // 2^14 with padding up to the bound is fine.
        let (mut rx, mut client) = tls13_rx();
        let mut inner = vec![b'a'; MAX_PLAINTEXT];
        inner.push(APPLICATION_DATA);
        inner.resize(MAX_PLAINTEXT + 256 - 16, 0);
        let mut rec = raw_record(&mut client, &inner);
        assert!(matches!(rx.open(&mut rec), Ok(Opened::Data(r)) if r.len() == MAX_PLAINTEXT));
    }

    #[test]
    fn empty_records_in_a_row_are_capped() {
        let (mut rx, mut client) = tls13_rx();
        for round in 0..2 {
            for i in 0..MAX_IDLE_RECORDS {
                let mut rec = raw_record(&mut client, &[APPLICATION_DATA, 0, 0]);
                let opened = rx.open(&mut rec);
                assert!(
                    matches!(opened, Ok(Opened::Data(r)) if r.is_empty()),
                    "{round} {i}"
                );
            }
            if round == 0 {
                // Data resets the count.
                let mut rec = raw_record(&mut client, &[b'd', APPLICATION_DATA]);
                assert!(matches!(rx.open(&mut rec), Ok(Opened::Data(r)) if r.len() == 1));
            }
        }
        let mut rec = raw_record(&mut client, &[APPLICATION_DATA]);
        assert_eq!(rx.open(&mut rec), Err(BadRecord(Fatal::UnexpectedMessage)));
        // All padding, no content type.
        let (mut rx, mut client) = tls13_rx();
        let mut rec = raw_record(&mut client, &[0, 0, 0]);
        assert_eq!(rx.open(&mut rec), Err(BadRecord(Fatal::UnexpectedMessage)));
    }

    #[test]
    fn key_updates_in_a_row_are_capped() {
        let (mut rx, mut client) = tls13_rx();
        for _ in 0..MAX_IDLE_RECORDS {
            client.request_update();
            let mut wire = Vec::new();
            assert_eq!(client.seal_update(&mut wire), Ok(true));
            assert_eq!(
                rx.open(&mut wire),
                Ok(Opened::KeyUpdate { requested: false })
            );
        }
        client.request_update();
        let mut wire = Vec::new();
        client.seal_update(&mut wire).unwrap();
        assert_eq!(rx.open(&mut wire), Err(BadRecord(Fatal::UnexpectedMessage)));
    }

    /// Handshake messages after the handshake: a whole KeyUpdate ending its
    /// record is the only one taken.
    #[test]
    fn handshake_messages_other_than_a_whole_key_update_are_refused() {
        let cases: &[(&[u8], Result<bool, Fatal>)] = &[
            (&[24, 0, 0, 1, 1], Ok(true)),
            (&[24, 0, 0, 1, 0], Ok(false)),
            // Split across records: part of a header, part of a body.
            (&[24, 0, 0], Err(Fatal::UnexpectedMessage)),
            (&[24, 0, 0, 2, 1], Err(Fatal::UnexpectedMessage)),
            // Another message after it: the KeyUpdate does not end the record.
            (
                &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0],
                Err(Fatal::UnexpectedMessage),
            ),
            (&[24, 0, 0, 1, 0, 24], Err(Fatal::UnexpectedMessage)),
            // A NewSessionTicket, a ClientHello.
            (&[4, 0, 0, 1, 0], Err(Fatal::UnexpectedMessage)),
            (&[1, 0, 0, 0], Err(Fatal::UnexpectedMessage)),
            // A KeyUpdate of the wrong length, or an unknown request.
            (&[24, 0, 0, 2, 0, 0], Err(Fatal::DecodeError)),
            (&[24, 0, 0, 0], Err(Fatal::DecodeError)),
            (&[24, 0, 0, 1, 2], Err(Fatal::IllegalParameter)),
        ];
        for (msgs, want) in cases {
            let (mut rx, mut client) = tls13_rx();
            let mut inner = msgs.to_vec();
            inner.push(HANDSHAKE);
            let mut rec = raw_record(&mut client, &inner);
            let got = rx.open(&mut rec);
            match want {
                Ok(requested) => {
                    assert_eq!(
                        got,
                        Ok(Opened::KeyUpdate {
                            requested: *requested
                        })
                    );
                    // The client's next key opens what follows.
                    let mut next = client_sealer(&rx);
                    assert_eq!(next.seq, 0);
                    let mut rec = raw_record(&mut next, &[b'k', APPLICATION_DATA]);
                    assert!(matches!(rx.open(&mut rec), Ok(Opened::Data(_))));
                }
                Err(f) => assert_eq!(got, Err(BadRecord(*f)), "{msgs:?}"),
            }
        }
        // An empty handshake record; a ChangeCipherSpec record after the
        // handshake.
        let (mut rx, mut client) = tls13_rx();
        let mut rec = raw_record(&mut client, &[HANDSHAKE]);
        assert_eq!(rx.open(&mut rec), Err(BadRecord(Fatal::UnexpectedMessage)));
        let mut ccs = vec![0x14, 3, 3, 0, 1, 1];
        assert_eq!(rx.open(&mut ccs), Err(BadRecord(Fatal::UnexpectedMessage)));
    }

    #[test]
    fn tls12_takes_no_handshake_record_after_the_handshake() {
        for suite in tls12_suites() {
            let (server, _client, captured) = pair(suite);
            let (_tx, rx) = take_both(server, &captured).unwrap();
            let mut rx = *rx;
            let mut client = client_sealer(&rx);
            let mut wire = Vec::new();
            client
                .seal_with(&mut wire, HANDSHAKE, |o| o.extend_from_slice(&[1, 0, 0, 0]))
                .unwrap();
            assert_eq!(rx.open(&mut wire), Err(BadRecord(Fatal::UnexpectedMessage)));
            // Its key update is a no-op: TLS 1.2 has none.
            client.request_update();
            assert!(!client.update_pending());
        }
    }

    /// The record layer is most of what an idle TLS stream adds to a plain one.
    #[test]
    fn a_record_layer_stays_within_640_bytes() {
        let n = std::mem::size_of::<RecordTx>();
        eprintln!("RecordTx is {n} bytes");
        assert!(n <= 640, "RecordTx is {n} bytes");
    }

    /// The hand-off finds the generation rustls is at (the client updated its
    /// keys before it, and rustls its own in answer), and refuses secrets
    /// that are not the connection's.
    #[test]
    fn the_hand_off_follows_updates_made_before_it_and_checks_the_secrets() {
        for suite in tls13_suites() {
            let (mut server, mut client, captured) = pair(suite);
            for _ in 0..2 {
                client.refresh_traffic_keys().unwrap();
            }
            client.writer().write_all(b"request").unwrap();
            let wire = client_wire(&mut client);
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut got = [0u8; 7];
            server.reader().read_exact(&mut got).unwrap();
            // rustls' reply is parked until it next writes (module doc of
            // `crate::http`): the empty write puts it in line.
            std::io::Write::write(&mut server.writer(), &[]).unwrap();
            let mut reply = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut reply).unwrap();
            }
            assert!(!reply.is_empty(), "rustls' KeyUpdate reply");
            let (mut tx, mut rx) = take_both(server, &captured).unwrap();
            client.read_tls(&mut &reply[..]).unwrap();
            client.process_new_packets().unwrap();
            let mut wire = Vec::new();
            tx.seal(&mut wire, b"sealed by herald").unwrap();
            assert_eq!(read_all(&mut client, &wire), b"sealed by herald");
            client.writer().write_all(b"to herald").unwrap();
            let (got, _, _) = open_all(&mut rx, client_wire(&mut client));
            assert_eq!(got, b"to herald");

            // Another handshake's secrets do not match.
            let (server, _client, _) = pair(suite);
            let (_, _, other) = pair(suite);
            assert!(take_both(server, &other).is_err());
            let (server, _client, _) = pair(suite);
            assert!(take_both(server, &Captured::default()).is_err());
        }
    }

    /// herald's derivation of the next keys is rustls' own: an unbuffered
    /// rustls server made into a `KernelConnection` updates its secrets, and
    /// herald's keys from the captured secrets are the same, generation after
    /// generation, both ways, for the three TLS 1.3 suites.
    #[test]
    fn derivation_matches_rustls_kernel_connection() {
        use rustls::server::UnbufferedServerConnection;
        use rustls::unbuffered::ConnectionState;
        for suite in tls13_suites() {
            let (server_cfg, client_cfg) = configs(suite);
            let mut server = UnbufferedServerConnection::new(Arc::new(server_cfg)).unwrap();
            let mut client = ClientConnection::new(
                Arc::new(client_cfg),
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut captured = Captured::default();
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            let mut done = false;
            for _ in 0..100 {
                to_server.extend(client_wire(&mut client));
                let discard = capturing(&mut captured, || {
                    let status = server.process_tls_records(&mut to_server);
                    match status.state.unwrap() {
                        ConnectionState::EncodeTlsData(mut e) => {
                            let mut buf = vec![0u8; 1 << 16];
                            let n = e.encode(&mut buf).unwrap();
                            to_client.extend_from_slice(&buf[..n]);
                        }
                        ConnectionState::TransmitTlsData(t) => t.done(),
                        ConnectionState::BlockedHandshake => {}
                        ConnectionState::WriteTraffic(_) => done = true,
                        other => panic!("{other:?}"),
                    }
                    status.discard
                });
                to_server.drain(..discard);
                if !to_client.is_empty() {
                    client.read_tls(&mut &to_client[..]).unwrap();
                    client.process_new_packets().unwrap();
                    to_client.clear();
                }
                if done {
                    break;
                }
            }
            assert!(done, "{suite:?}: handshake not done");
            let (secrets, mut kernel) = server.dangerous_into_kernel_connection().unwrap();
            let aead = Aead::of(&secrets.tx.1).unwrap();
            let ours = |m: &Material| {
                let mut key = Material::EMPTY;
                let iv = TrafficSecret { aead, secret: m }.key_iv(&mut key);
                (key.0[..aead.key_len()].to_vec(), iv)
            };
            let theirs = |s: &ConnectionTrafficSecrets| {
                let (key, iv) = key_iv(s, aead).unwrap();
                (key.to_vec(), iv)
            };
            let mut tx = captured.server().unwrap().0.clone();
            let mut rx = captured.client().unwrap().0.clone();
            assert!(ours(&tx) == theirs(&secrets.tx.1), "{suite:?} tx gen 0");
            assert!(ours(&rx) == theirs(&secrets.rx.1), "{suite:?} rx gen 0");
            for generation in 1..=5 {
                tx = TrafficSecret { aead, secret: &tx }.next();
                rx = TrafficSecret { aead, secret: &rx }.next();
                let (seq, t) = kernel.update_tx_secret().unwrap();
                assert_eq!(seq, 0);
                assert!(ours(&tx) == theirs(&t), "{suite:?} tx gen {generation}");
                let (seq, r) = kernel.update_rx_secret().unwrap();
                assert_eq!(seq, 0);
                assert!(ours(&rx) == theirs(&r), "{suite:?} rx gen {generation}");
            }
        }
    }
}
