//! The sending half of TLS for lean streams: records sealed by herald itself.
//!
//! rustls makes the handshake and reads the request head. Once a connection is
//! an SSE stream it only ever sends: herald then takes the session's sending key
//! out of rustls (the secret extraction meant for kTLS; this kernel has no kTLS)
//! and drops the rest of the rustls connection, its 4 KiB read buffer and its
//! state machine with it. What an idle TLS stream keeps is this [`RecordTx`]: an
//! AEAD key (ring), the IV, the sequence number, and a buffer only while the
//! kernel has not taken a whole write.
//!
//! Sealing is RFC 8446 §5.2 (TLS 1.3: the inner content type after the plaintext,
//! the record header as additional data) and RFC 5246 §6.2.3.3 with RFC 5288 /
//! RFC 7905 (TLS 1.2: the sequence number, type, version and length as additional
//! data; AES-GCM carries an explicit nonce). The nonce is the IV XOR the sequence
//! number in every case, as rustls builds it, so the records continue the
//! sequence rustls started. The client's records are not read any more: what a
//! client sends on an event stream only tells that it is gone (see
//! [`crate::shard::io`]).

use std::io::IoSlice;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConnection};

/// The largest plaintext of one record (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Bytes a record adds to its plaintext at most: header, explicit nonce or
/// inner content type, tag.
pub const MAX_OVERHEAD: usize = 5 + 8 + 16;

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
/// Records sealed with one AES-GCM key before the stream is ended: the
/// confidentiality limit rustls applies (RFC 8446 §5.5 gives 2^24.5). A TLS 1.3
/// session would update its key; the extracted secrets cannot, so the stream
/// ends and its client resumes with `Last-Event-ID` on a new session.
const AES_GCM_LIMIT: u64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tls13,
    /// TLS 1.2 AES-GCM: an explicit 8-byte nonce in every record.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: no explicit nonce.
    Tls12ChaCha,
}

/// The sealing state of one lean TLS stream.
pub struct RecordTx {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    limit: u64,
    kind: Kind,
    /// Sealed bytes the kernel has not taken yet (empty, unallocated, when the
    /// stream is caught up): written before anything newer.
    pub pending: Vec<u8>,
}

/// The session's key is used up ([`AES_GCM_LIMIT`]): end the stream.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyExhausted;

impl RecordTx {
    /// Take the sending key of a connection whose handshake is complete and
    /// whose outgoing records are all written; the connection is consumed.
    pub fn take(conn: ServerConnection) -> Result<Box<RecordTx>, String> {
        // Only the sending key: a lean stream never reads a record again.
        let (tls13, secrets) = extract(conn)?;
        Ok(RecordTx::from_key(key_of(secrets.tx, tls13)?))
    }

    fn from_key(k: Key) -> Box<RecordTx> {
        Box::new(RecordTx {
            key: k.key,
            iv: k.iv,
            seq: k.seq,
            limit: k.limit,
            kind: k.kind,
            pending: Vec::new(),
        })
    }

    /// Seal `plaintext` (at most [`MAX_PLAINTEXT`] bytes) as one application-data
    /// record appended to `out`.
    pub fn seal(&mut self, out: &mut Vec<u8>, plaintext: &[u8]) -> Result<(), KeyExhausted> {
        self.seal_with(out, APPLICATION_DATA, |o| o.extend_from_slice(plaintext))
    }

    /// Seal the `close_notify` alert (the stream ends cleanly, not truncated).
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), KeyExhausted> {
        // Level warning (1), description close_notify (0).
        self.seal_with(out, ALERT, |o| o.extend_from_slice(&[1, 0]))
    }

    /// Seal up to `budget` bytes of `chunks` (in order, as records of at most
    /// [`MAX_PLAINTEXT`]) into `out`; returns how many plaintext bytes it took.
    /// Frames are coalesced: one record, one seal, for everything a flush has for
    /// the stream when it fits.
    pub fn seal_chunks(
        &mut self,
        out: &mut Vec<u8>,
        chunks: &[IoSlice<'_>],
        budget: usize,
    ) -> Result<usize, KeyExhausted> {
        let mut taken = 0;
        let (mut i, mut off) = (0, 0);
        while i < chunks.len() && taken < budget {
            let room = MAX_PLAINTEXT.min(budget - taken);
            let mut filled = 0;
            self.seal_with(out, APPLICATION_DATA, |o| {
                while i < chunks.len() && filled < room {
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

    /// Append one record of `content_type` whose plaintext `fill` writes.
    fn seal_with(
        &mut self,
        out: &mut Vec<u8>,
        content_type: u8,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), KeyExhausted> {
        if self.seq >= self.limit {
            return Err(KeyExhausted);
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
        // Sealing fails only for inputs far larger than a record.
        let tag = tag.map_err(|_| KeyExhausted)?;
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(())
    }
}

/// One direction's key, as rustls extracted it.
struct Key {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    limit: u64,
    kind: Kind,
}

fn key_of((seq, secret): (u64, ConnectionTrafficSecrets), tls13: bool) -> Result<Key, String> {
    let kind_gcm = if tls13 { Kind::Tls13 } else { Kind::Tls12Gcm };
    let kind_chacha = if tls13 {
        Kind::Tls13
    } else {
        Kind::Tls12ChaCha
    };
    let (alg, key, iv, kind, limit) = match secret {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            (&aead::AES_128_GCM, key, iv, kind_gcm, AES_GCM_LIMIT)
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            (&aead::AES_256_GCM, key, iv, kind_gcm, AES_GCM_LIMIT)
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (&aead::CHACHA20_POLY1305, key, iv, kind_chacha, u64::MAX)
        }
        _ => return Err("unsupported cipher suite".into()),
    };
    let unbound = UnboundKey::new(alg, key.as_ref()).map_err(|_| "bad key length")?;
    let iv: [u8; 12] = iv.as_ref().try_into().map_err(|_| "bad IV length")?;
    Ok(Key {
        key: LessSafeKey::new(unbound),
        iv,
        seq,
        limit,
        kind,
    })
}

/// Take both keys of a connection whose handshake is complete, whose outgoing
/// records are all written and which holds no part of a record received (see
/// [`super::WholeRecords`]); the connection is consumed.
pub fn take_both(conn: ServerConnection) -> Result<(Box<RecordTx>, Box<RecordRx>), String> {
    let (tls13, secrets) = extract(conn)?;
    let rx = key_of(secrets.rx, tls13)?;
    Ok((
        RecordTx::from_key(key_of(secrets.tx, tls13)?),
        Box::new(RecordRx {
            key: rx.key,
            iv: rx.iv,
            seq: rx.seq,
            kind: rx.kind,
        }),
    ))
}

/// The secrets of a connection whose handshake is complete, and whether it
/// is TLS 1.3.
fn extract(conn: ServerConnection) -> Result<(bool, rustls::ExtractedSecrets), String> {
    let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(|e| e.to_string())?;
    Ok((tls13, secrets))
}

/// The largest record a peer may send: its header, a full plaintext and the
/// most expansion TLS 1.2 allows (RFC 5246 §6.2.3; TLS 1.3's 256 is less).
pub const MAX_RECORD: usize = 5 + MAX_PLAINTEXT + 2048;

/// What one received record was.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application data: this range of the record buffer is its plaintext.
    Data(std::ops::Range<usize>),
    /// An alert (`close_notify` or fatal): the peer is done.
    Alert,
}

/// A record could not be opened (forged, truncated, out of sequence) or is of a
/// kind herald does not take after the handshake (a TLS 1.3 key update, a
/// renegotiation): the connection ends.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRecord;

/// The receiving half of a connection whose records herald opens itself (its
/// HTTP/2 connections): the peer's key, IV and sequence number.
pub struct RecordRx {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    kind: Kind,
}

impl RecordRx {
    /// The length of the whole record at the start of `buf` (header included)
    /// once its header is there; an error for a record no peer may send.
    pub fn record_len(buf: &[u8]) -> Option<Result<usize, BadRecord>> {
        let header = buf.get(..5)?;
        let len = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD || header[1] != 3 {
            return Some(Err(BadRecord));
        }
        Some(Ok(len))
    }

    /// Open the whole record `record` (header included) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, BadRecord> {
        let outer_type = record[0];
        let mut nonce = self.iv;
        let body_start = match self.kind {
            Kind::Tls12Gcm => {
                // The explicit nonce follows the header (RFC 5288 §3).
                let explicit = record.get(5..13).ok_or(BadRecord)?;
                nonce[4..].copy_from_slice(explicit);
                13
            }
            _ => {
                for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                    *n ^= s;
                }
                5
            }
        };
        let tag_len = self.key.algorithm().tag_len();
        let cipher_len = record
            .len()
            .checked_sub(body_start + tag_len)
            .ok_or(BadRecord)?;
        let nonce = Nonce::assume_unique_for_key(nonce);
        let (header, body) = record.split_at_mut(body_start);
        let plain_len = match self.kind {
            Kind::Tls13 => {
                if outer_type != APPLICATION_DATA {
                    return Err(BadRecord);
                }
                let aad = Aad::from(<[u8; 5]>::try_from(&header[..5]).map_err(|_| BadRecord)?);
                let plain = self
                    .key
                    .open_in_place(nonce, aad, body)
                    .map_err(|_| BadRecord)?;
                // The inner content type is the last byte that is not padding.
                let end = plain.iter().rposition(|&b| b != 0).ok_or(BadRecord)?;
                match plain[end] {
                    APPLICATION_DATA => end,
                    ALERT => {
                        self.seq += 1;
                        return Ok(Opened::Alert);
                    }
                    // A key update or any other handshake message.
                    _ => return Err(BadRecord),
                }
            }
            Kind::Tls12Gcm | Kind::Tls12ChaCha => {
                let mut aad = [0u8; 13];
                aad[..8].copy_from_slice(&self.seq.to_be_bytes());
                aad[8] = outer_type;
                aad[9..11].copy_from_slice(&[3, 3]);
                aad[11..].copy_from_slice(&(cipher_len as u16).to_be_bytes());
                self.key
                    .open_in_place(nonce, Aad::from(aad), body)
                    .map_err(|_| BadRecord)?;
                match outer_type {
                    APPLICATION_DATA => cipher_len,
                    ALERT => {
                        self.seq += 1;
                        return Ok(Opened::Alert);
                    }
                    _ => return Err(BadRecord),
                }
            }
        };
        self.seq += 1;
        Ok(Opened::Data(body_start..body_start + plain_len))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConnection, SupportedCipherSuite};

    use super::*;

    /// A client and a server that completed a handshake in memory with `suite`,
    /// the server's outgoing records all delivered to the client.
    fn pair(suite: SupportedCipherSuite) -> (ServerConnection, ClientConnection) {
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
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
        let mut client = ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
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
            server.process_new_packets().unwrap();
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
        (server, client)
    }

    fn read_all(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
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

    /// Every suite of the ring provider a P-256 certificate (rcgen's) can use:
    /// TLS 1.3's three, TLS 1.2's ECDHE-ECDSA ones.
    fn every_suite() -> Vec<SupportedCipherSuite> {
        rustls::crypto::ring::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| !format!("{:?}", s.suite()).contains("_RSA_"))
            .collect()
    }

    #[test]
    fn rustls_clients_read_what_herald_seals_with_every_suite() {
        // Three TLS 1.3 suites and three TLS 1.2 ones (both nonce layouts).
        assert_eq!(every_suite().len(), 6);
        for suite in every_suite() {
            let (server, mut client) = pair(suite);
            let mut tx = RecordTx::take(server).unwrap();
            let mut wire = Vec::new();
            tx.seal(&mut wire, b"id: 1\ndata: one\n\n").unwrap();
            let big = vec![b'x'; 40_000];
            let chunks = [
                IoSlice::new(b"id: 2\n"),
                IoSlice::new(&big),
                IoSlice::new(b"\n\n"),
            ];
            let taken = tx.seal_chunks(&mut wire, &chunks, usize::MAX).unwrap();
            assert_eq!(taken, 6 + 40_000 + 2);
            let got = read_all(&mut client, &wire);
            let mut want = b"id: 1\ndata: one\n\nid: 2\n".to_vec();
            want.extend_from_slice(&big);
            want.extend_from_slice(b"\n\n");
            assert_eq!(got, want, "{suite:?}");
        }
    }

    #[test]
    fn a_budget_stops_mid_chunk_and_the_rest_follows() {
        let (server, mut client) = pair(every_suite()[0]);
        let mut tx = RecordTx::take(server).unwrap();
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
            let (server, mut client) = pair(suite);
            let mut tx = RecordTx::take(server).unwrap();
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

    /// Split `wire` into whole records and open each with `rx`.
    fn open_all(rx: &mut RecordRx, mut wire: Vec<u8>) -> (Vec<u8>, bool) {
        let (mut got, mut alert) = (Vec::new(), false);
        while !wire.is_empty() {
            let len = RecordRx::record_len(&wire).unwrap().unwrap();
            let mut rest = wire.split_off(len);
            std::mem::swap(&mut rest, &mut wire);
            match rx.open(&mut rest).unwrap() {
                Opened::Data(r) => got.extend_from_slice(&rest[r]),
                Opened::Alert => alert = true,
            }
        }
        (got, alert)
    }

    #[test]
    fn herald_opens_what_rustls_clients_seal_with_every_suite() {
        for suite in every_suite() {
            let (server, mut client) = pair(suite);
            // The client's first record goes through rustls, so the sequence
            // number extracted is not zero.
            client.writer().write_all(b"early").unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut server = server;
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut early = [0u8; 5];
            server.reader().read_exact(&mut early).unwrap();
            let (_tx, mut rx) = take_both(server).unwrap();
            let big = vec![b'y'; 40_000];
            client.writer().write_all(b"PRI * HTTP/2.0").unwrap();
            client.writer().write_all(&big).unwrap();
            client.send_close_notify();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let (got, alert) = open_all(&mut rx, wire);
            let mut want = b"PRI * HTTP/2.0".to_vec();
            want.extend_from_slice(&big);
            assert_eq!(got, want, "{suite:?}");
            assert!(alert, "{suite:?}: close_notify seen");
        }
    }

    #[test]
    fn a_forged_or_replayed_record_is_refused() {
        for suite in every_suite() {
            let (server, mut client) = pair(suite);
            let (_tx, mut rx) = take_both(server).unwrap();
            client.writer().write_all(b"data").unwrap();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut forged = wire.clone();
            let last = forged.len() - 1;
            forged[last] ^= 1;
            assert_eq!(rx.open(&mut forged), Err(BadRecord), "{suite:?}");
            let mut ok = wire.clone();
            assert!(matches!(rx.open(&mut ok), Ok(Opened::Data(_))), "{suite:?}");
            // The same record again is out of sequence.
            let mut replay = wire.clone();
            assert_eq!(rx.open(&mut replay), Err(BadRecord), "{suite:?}");
        }
        assert_eq!(
            RecordRx::record_len(&[0x17, 3, 3, 0xff, 0xff]),
            Some(Err(BadRecord))
        );
        assert_eq!(RecordRx::record_len(&[0x17, 3, 3]), None);
    }

    /// The record layer is most of what an idle TLS stream adds to a plain one.
    #[test]
    fn a_record_layer_stays_within_640_bytes() {
        let n = std::mem::size_of::<RecordTx>();
        eprintln!("RecordTx is {n} bytes");
        assert!(n <= 640, "RecordTx is {n} bytes");
    }

    #[test]
    fn an_aes_gcm_key_is_not_used_past_its_limit() {
        let (server, _client) = pair(every_suite()[0]);
        let mut tx = RecordTx::take(server).unwrap();
        tx.seq = tx.limit;
        assert_eq!(tx.seal(&mut Vec::new(), b"x"), Err(KeyExhausted));
    }
}
