//! The record layer against rustls clients in memory, with every suite.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ConnectionTrafficSecrets, ServerConnection, SupportedCipherSuite};

use super::handoff::key_iv;
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
pub(crate) fn pair(suite: SupportedCipherSuite) -> (ServerConnection, ClientConnection, Captured) {
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
fn a_record_layer_stays_within_624_bytes() {
    let n = std::mem::size_of::<RecordTx>();
    eprintln!("RecordTx is {n} bytes");
    assert!(n <= 624, "RecordTx is {n} bytes");
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
