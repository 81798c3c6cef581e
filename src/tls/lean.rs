//! The record layer of a lean HTTP/1.1 TLS stream ([`crate::shard::io`]).
//!
//! A lean stream seals with its [`RecordTx`] and reads what its client sends
//! as records: application data is discarded, `close_notify` or any alert ends
//! the stream, a KeyUpdate moves the receiving key on and, when the client
//! asks for one, makes herald send its own before its next record (the shard's
//! flush writes it even with no event queued). A record that cannot be taken
//! ends the stream with the fatal alert [`RecordRx`] names.
//!
//! Memory per idle stream is what herald is about, so an idle lean stream
//! holds no receiving AEAD key (ring's AES key schedule and GHASH table, about
//! 0.5 KB): it keeps what derives one, the client's traffic secret (TLS 1.3)
//! or its key and IV (TLS 1.2), and the sequence number. When input arrives the
//! key is made, the records opened, and the key dropped again. Part of a record
//! is kept (in a buffer of its size, only while it lasts), and must be
//! completed within `--header-timeout`: the shard lists the stream once
//! ([`Received::list`]) and its timer, which runs only while a stream is
//! listed, asks [`LeanTls::partial_deadline`].

use std::io::Read;

use rustls::ServerConnection;

use super::keys::Captured;
use super::record::{self, BadRecord, Fatal, Opened, RecordRx, RecordTx, RxState, SealError};

/// Input read per readiness event past which the client is not a browser
/// reading an event stream: the stream is closed.
pub const INPUT_LIMIT: usize = 32 << 10;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// The record layer of one lean TLS stream.
pub struct LeanTls {
    pub tx: RecordTx,
    rx: RxState,
    /// What only some streams need, while they do: sealed bytes the kernel
    /// has not taken, part of a record received.
    side: Option<Box<Side>>,
    /// On the shard's list of streams holding part of a record.
    listed: bool,
    /// The fatal alert the stream ends with (else `close_notify`).
    alert: Option<Fatal>,
}

#[derive(Default)]
struct Side {
    /// Sealed bytes the kernel has not taken yet: written before anything
    /// newer.
    pending: Vec<u8>,
    /// Part of a record received.
    partial: Vec<u8>,
    /// When `partial` must be complete (`crate::clock::now_ns` time).
    deadline: u64,
}

/// What reading a lean stream's input came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// The stream ends: the client closed, went away, sent an alert or what
    /// herald refuses, or sent too much.
    pub end: bool,
    /// A KeyUpdate is due: the stream is to be flushed even with nothing queued.
    pub reply: bool,
    /// The stream began holding part of a record and is to be listed for the
    /// deadline given (it was not listed).
    pub list: Option<u64>,
}

impl LeanTls {
    /// Take the keys of a connection as [`record::hand_off`] says.
    pub fn take(conn: ServerConnection, captured: &Captured) -> Result<Box<LeanTls>, String> {
        let h = record::hand_off(conn, captured)?;
        Ok(Box::new(LeanTls {
            tx: h.tx,
            rx: h.rx,
            side: None,
            listed: false,
            alert: None,
        }))
    }

    /// For the property tests and the fuzz target: a lean stream whose client
    /// seals with the returned [`RecordTx`] ([`record::fixed_pair`]'s keys).
    #[doc(hidden)]
    pub fn fixed(which: u8) -> (RecordTx, Box<LeanTls>) {
        let (client, _) = record::fixed_pair(which);
        let (own, _) = record::fixed_pair(which);
        let (rx, _) = record::fixed_state(which);
        let lean = Box::new(LeanTls {
            tx: own,
            rx,
            side: None,
            listed: false,
            alert: None,
        });
        (client, lean)
    }

    /// Read what the client sent until `io` would block (or [`INPUT_LIMIT`])
    /// and open it, after what was kept of a record. `scratch` is a buffer to
    /// work in; `now` and `timeout` (nanoseconds) set the deadline of a record
    /// left incomplete.
    pub fn read_from(
        &mut self,
        io: &mut impl Read,
        scratch: &mut Vec<u8>,
        now: u64,
        timeout: u64,
    ) -> Received {
        let mut got = Received::default();
        scratch.clear();
        let mut deadline = None;
        if let Some(side) = self.side.as_mut().filter(|s| !s.partial.is_empty()) {
            scratch.extend_from_slice(&side.partial);
            side.partial = Vec::new();
            deadline = Some(side.deadline);
        }
        self.tidy();
        // The receiving key, made when the first whole record is there.
        let mut rx: Option<RecordRx> = None;
        let mut read = 0;
        while !got.end {
            let at = scratch.len();
            scratch.resize(at + READ_CHUNK, 0);
            let n = match io.read(&mut scratch[at..]) {
                Ok(0) => {
                    got.end = true;
                    0
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    scratch.truncate(at);
                    break;
                }
                Err(_) => {
                    got.end = true;
                    0
                }
            };
            scratch.truncate(at + n);
            read += n;
            let opened = self.open_whole(scratch, &mut rx, &mut got);
            if opened > 0 {
                // What was kept is complete: a record left now is a new one.
                deadline = None;
                scratch.drain(..opened);
            }
            if read >= INPUT_LIMIT {
                got.end = true;
            }
        }
        if let Some(rx) = rx {
            self.rx = rx.into_state();
        }
        if !got.end && !scratch.is_empty() {
            let deadline = deadline.unwrap_or(now.saturating_add(timeout));
            let side = self.side.get_or_insert_with(Box::default);
            side.partial = scratch.as_slice().to_vec();
            side.deadline = deadline;
            if !self.listed {
                self.listed = true;
                got.list = Some(deadline);
            }
        }
        got
    }

    /// Open the whole records at the front of `buf`; how many bytes they were.
    fn open_whole(
        &mut self,
        buf: &mut [u8],
        rx: &mut Option<RecordRx>,
        got: &mut Received,
    ) -> usize {
        let mut at = 0;
        while let Some(len) = RecordRx::record_len(&buf[at..]) {
            let len = match len {
                Ok(len) if buf.len() - at >= len => len,
                Ok(_) => break,
                Err(BadRecord(alert)) => {
                    self.alert = Some(alert);
                    got.end = true;
                    break;
                }
            };
            let rx = rx.get_or_insert_with(|| RecordRx::from_state(self.rx.clone()));
            match rx.open(&mut buf[at..at + len]) {
                // Discarded: an event stream's client has nothing to say.
                Ok(Opened::Data(_)) => {}
                Ok(Opened::KeyUpdate { requested }) => {
                    if requested {
                        self.tx.request_update();
                        got.reply = true;
                    }
                }
                Ok(Opened::Alert(_)) => got.end = true,
                Err(BadRecord(alert)) => {
                    self.alert = Some(alert);
                    got.end = true;
                }
            }
            at += len;
            if got.end {
                break;
            }
        }
        at
    }

    /// When the part of a record the stream holds must be complete; `None`
    /// when it holds none (it is then no longer listed).
    pub fn partial_deadline(&mut self) -> Option<u64> {
        let deadline = self
            .side
            .as_ref()
            .filter(|s| !s.partial.is_empty())
            .map(|s| s.deadline);
        self.listed = deadline.is_some();
        deadline
    }

    /// Sealed bytes the kernel has not taken yet (empty when the stream is
    /// caught up).
    pub fn pending(&self) -> &[u8] {
        self.side.as_ref().map_or(&[], |s| &s.pending)
    }

    /// The kernel took `n` bytes of [`LeanTls::pending`].
    pub fn written(&mut self, n: usize) {
        if let Some(side) = &mut self.side {
            if n >= side.pending.len() {
                side.pending = Vec::new();
                self.tidy();
            } else {
                side.pending.drain(..n);
            }
        }
    }

    /// Keep `sealed`, which the kernel did not take: sealed records cannot be
    /// sealed again, they wait as they are.
    pub fn keep(&mut self, sealed: &[u8]) {
        self.side.get_or_insert_with(Box::default).pending = sealed.to_vec();
    }

    /// No box for nothing.
    fn tidy(&mut self) {
        if self
            .side
            .as_ref()
            .is_some_and(|s| s.pending.is_empty() && s.partial.is_empty())
        {
            self.side = None;
        }
    }

    /// Seal the stream's last record: the fatal alert it ends with, or
    /// `close_notify`.
    pub fn seal_end(&mut self, out: &mut Vec<u8>) -> Result<(), SealError> {
        match self.alert {
            Some(alert) => self.tx.fatal_alert(out, alert),
            None => self.tx.close_notify(out),
        }
    }

    /// The fatal alert the stream ends with, if it is to end with one.
    pub fn alert(&self) -> Option<Fatal> {
        self.alert
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::tls::record::tests::{client_wire, pair, read_all, tls13_suites};

    /// A socket with `self.0` to read, then nothing yet (`WouldBlock`), read
    /// `self.1` bytes at a time.
    struct Feed(Vec<u8>, usize);

    impl Read for Feed {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn lean_of(suite: rustls::SupportedCipherSuite) -> (Box<LeanTls>, rustls::ClientConnection) {
        let (server, client, captured) = pair(suite);
        (LeanTls::take(server, &captured).unwrap(), client)
    }

    /// A client's KeyUpdate(update_requested) on a lean stream: read as
    /// records, answered alone (nothing queued), then events follow under
    /// herald's next key.
    #[test]
    fn a_lean_stream_answers_a_key_update() {
        for suite in tls13_suites() {
            let (mut lean, mut client) = lean_of(suite);
            let mut scratch = Vec::new();
            client.writer().write_all(b"ignored").unwrap();
            client.refresh_traffic_keys().unwrap();
            client.writer().write_all(b"ignored too").unwrap();
            let mut io = Feed(client_wire(&mut client), 7);
            let got = lean.read_from(&mut io, &mut scratch, 0, SEC);
            assert_eq!(
                got,
                Received {
                    end: false,
                    reply: true,
                    list: None
                }
            );
            assert!(lean.side.is_none() && lean.tx.update_pending());
            let mut wire = Vec::new();
            assert_eq!(lean.tx.seal_chunks(&mut wire, &[], 100), Ok(0));
            assert!(!wire.is_empty(), "the KeyUpdate alone");
            lean.tx.seal(&mut wire, b"event").unwrap();
            assert_eq!(read_all(&mut client, &wire), b"event");
            // The client's next records open with its next key.
            client.writer().write_all(b"more").unwrap();
            client.send_close_notify();
            let mut io = Feed(client_wire(&mut client), 4096);
            let got = lean.read_from(&mut io, &mut scratch, 0, SEC);
            assert!(got.end && lean.alert().is_none());
        }
    }

    /// Part of a record is kept with the deadline of when it came, the stream
    /// listed once; completed, it is opened and nothing is kept.
    #[test]
    fn part_of_a_record_is_kept_until_it_is_whole() {
        let (mut lean, mut client) = lean_of(tls13_suites()[1]);
        let mut scratch = Vec::new();
        client.writer().write_all(&[b'a'; 3000]).unwrap();
        let wire = client_wire(&mut client);
        let (first, rest) = wire.split_at(1000);
        let got = lean.read_from(&mut Feed(first[..3].to_vec(), 100), &mut scratch, 5, SEC);
        assert_eq!(got.list, Some(5 + SEC));
        let got = lean.read_from(&mut Feed(first[3..].to_vec(), 100), &mut scratch, 9, SEC);
        assert_eq!(got, Received::default(), "listed once, deadline kept");
        assert_eq!(lean.partial_deadline(), Some(5 + SEC));
        let got = lean.read_from(&mut Feed(rest.to_vec(), 100), &mut scratch, 10, SEC);
        assert_eq!(got, Received::default());
        assert_eq!(lean.partial_deadline(), None);
        // Unlisted now: a new part lists it again, with a new deadline.
        client.writer().write_all(b"b").unwrap();
        let wire = client_wire(&mut client);
        let got = lean.read_from(&mut Feed(wire[..6].to_vec(), 100), &mut scratch, 20, SEC);
        assert_eq!(got.list, Some(20 + SEC));
    }

    /// A record that does not open ends the stream with bad_record_mac, which
    /// the client receives; a header no peer may send with record_overflow.
    #[test]
    fn bad_input_ends_a_lean_stream_with_a_fatal_alert() {
        let (mut lean, mut client) = lean_of(tls13_suites()[0]);
        let mut scratch = Vec::new();
        client.writer().write_all(b"x").unwrap();
        let mut wire = client_wire(&mut client);
        let last = wire.len() - 1;
        wire[last] ^= 0x80;
        let got = lean.read_from(&mut Feed(wire, 4096), &mut scratch, 0, SEC);
        assert!(got.end);
        assert_eq!(lean.alert(), Some(Fatal::BadRecordMac));
        let mut out = Vec::new();
        lean.seal_end(&mut out).unwrap();
        client.read_tls(&mut &out[..]).unwrap();
        assert_eq!(
            client.process_new_packets().unwrap_err(),
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        );

        let (mut lean, _client) = lean_of(tls13_suites()[0]);
        let got = lean.read_from(
            &mut Feed(vec![0x17, 3, 3, 0x50, 0], 4096),
            &mut scratch,
            0,
            SEC,
        );
        assert!(got.end);
        assert_eq!(lean.alert(), Some(Fatal::RecordOverflow));
    }

    /// Every suite, TLS 1.2 too (its receiving key kept as key and IV):
    /// data is discarded and close_notify ends the stream without an alert.
    #[test]
    fn a_lean_stream_reads_every_suite_to_its_close_notify() {
        for suite in crate::tls::record::tests::every_suite() {
            let (mut lean, mut client) = lean_of(suite);
            let mut scratch = Vec::new();
            client.writer().write_all(b"discarded").unwrap();
            let got = lean.read_from(&mut Feed(client_wire(&mut client), 3), &mut scratch, 0, SEC);
            assert_eq!(got, Received::default(), "{suite:?}");
            client.send_close_notify();
            let got = lean.read_from(&mut Feed(client_wire(&mut client), 3), &mut scratch, 0, SEC);
            assert!(got.end && lean.alert().is_none(), "{suite:?}");
        }
    }

    /// Application data is discarded, and counts toward the input limit.
    #[test]
    fn too_much_input_ends_a_lean_stream() {
        let (mut lean, mut client) = lean_of(tls13_suites()[2]);
        let mut scratch = Vec::new();
        client
            .writer()
            .write_all(&vec![b'y'; INPUT_LIMIT / 2])
            .unwrap();
        let got = lean.read_from(
            &mut Feed(client_wire(&mut client), 4096),
            &mut scratch,
            0,
            SEC,
        );
        assert_eq!(got, Received::default());
        client.writer().write_all(&vec![b'y'; INPUT_LIMIT]).unwrap();
        let got = lean.read_from(
            &mut Feed(client_wire(&mut client), 4096),
            &mut scratch,
            0,
            SEC,
        );
        assert!(got.end && lean.alert().is_none());
    }

    /// What a lean TLS stream keeps (perf/RESULTS.md counts it per stream):
    /// no receiving key while idle, the secret it derives one from.
    #[test]
    fn a_lean_stream_keeps_no_receiving_key() {
        let n = std::mem::size_of::<LeanTls>();
        eprintln!(
            "LeanTls {n} B: RecordTx {} B, receiving state {} B",
            std::mem::size_of::<RecordTx>(),
            std::mem::size_of::<RxState>()
        );
        assert!(std::mem::size_of::<RxState>() <= 64);
        assert!(n <= 704, "LeanTls is {n} bytes");
    }
}
