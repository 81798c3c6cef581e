//! The receiving half of herald's record layer: the client's records opened
//! and checked (RFC 8446 §5, §6), its key updates followed.

use ring::aead::{Aad, LessSafeKey, Nonce};

use super::*;

/// The receiving state without its key: what a lean stream keeps while idle.
#[derive(Clone)]
pub(crate) struct RxState {
    /// TLS 1.3: the client's traffic secret; TLS 1.2: the key, then the IV.
    pub(super) material: Material,
    pub(super) seq: u64,
    pub(super) kind: Kind,
    pub(super) aead: Aead,
    /// Records in a row without application data.
    pub(super) idle: u8,
}

impl RxState {
    /// The ring key and IV of this state's generation.
    pub(super) fn keys(&self) -> (LessSafeKey, [u8; 12]) {
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
    pub(super) key: LessSafeKey,
    pub(super) iv: [u8; 12],
    pub(super) state: RxState,
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
