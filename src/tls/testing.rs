//! The record layer driven in memory, for the property tests
//! (`tests/tls_records.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/tls_records.rs`), which check the same things here: a
//! client seals a sequence of records ([`Op`]) with fixed keys
//! ([`super::record::fixed_pair`]), herald's reader opens them in whatever
//! pieces the bytes arrive ([`open_all`], as an HTTP/2 connection does; or
//! [`read_lean`], as a lean stream does), and what it makes of them must be
//! what a model of RFC 8446 §5 says ([`model`]); with the bytes changed
//! anywhere, it must be a prefix of that and then an error, never other
//! plaintext ([`check_changed`]).

use std::io::Read;

use super::lean::{LeanTls, Received};
use super::record::{fixed_pair, BadRecord, Fatal, Opened, RecordRx, MAX_PLAINTEXT};

const APPLICATION_DATA: u8 = 0x17;
const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;
/// herald's cap on records in a row without application data.
const MAX_IDLE: u32 = 32;

/// One record a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Application data (at most 2^14 bytes), with TLS 1.3 padding.
    Data(Vec<u8>, usize),
    /// A KeyUpdate (TLS 1.3 only; ignored on TLS 1.2), asking for one back.
    KeyUpdate(bool),
    /// An alert (level, description).
    Alert(u8, u8),
    /// A handshake message that is not a KeyUpdate (a NewSessionTicket).
    Handshake(Vec<u8>),
}

/// What herald's reader made of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Data(Vec<u8>),
    KeyUpdate(bool),
    Alert(u8),
    Refused(Fatal),
}

fn tls13(which: u8) -> bool {
    which % 5 < 3
}

/// The records of `ops` as the client of [`fixed_pair`]`(which)` seals them.
pub fn seal(which: u8, ops: &[Op]) -> Vec<u8> {
    let (mut client, _) = fixed_pair(which);
    let mut wire = Vec::new();
    for op in ops {
        let sealed = match op {
            Op::Data(d, pad) => {
                let pad = if tls13(which) { *pad } else { 0 };
                client.seal_raw(
                    &mut wire,
                    APPLICATION_DATA,
                    &d[..d.len().min(MAX_PLAINTEXT)],
                    pad,
                )
            }
            Op::KeyUpdate(requested) if tls13(which) => {
                client.seal_key_update(&mut wire, *requested)
            }
            Op::KeyUpdate(_) => Ok(()),
            Op::Alert(level, desc) => client.seal_raw(&mut wire, ALERT, &[*level, *desc], 0),
            Op::Handshake(m) => {
                let mut msg = vec![4, 0, 0, m.len().min(1000) as u8];
                msg.extend_from_slice(&m[..m.len().min(255)]);
                client.seal_raw(&mut wire, HANDSHAKE, &msg, 0)
            }
        };
        sealed.expect("a record within the limits seals");
    }
    wire
}

/// What herald's reader must make of `ops`, up to and including the first
/// record after which it reads no more.
pub fn model(which: u8, ops: &[Op]) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut idle = 0;
    for op in ops {
        let o = match op {
            Op::Data(d, _) => {
                let d = &d[..d.len().min(MAX_PLAINTEXT)];
                if d.is_empty() {
                    idle += 1;
                } else {
                    idle = 0;
                }
                if idle > MAX_IDLE {
                    Outcome::Refused(Fatal::UnexpectedMessage)
                } else {
                    Outcome::Data(d.to_vec())
                }
            }
            Op::KeyUpdate(_) if !tls13(which) => continue,
            Op::KeyUpdate(requested) => {
                idle += 1;
                if idle > MAX_IDLE {
                    Outcome::Refused(Fatal::UnexpectedMessage)
                } else {
                    Outcome::KeyUpdate(*requested)
                }
            }
            Op::Alert(_, desc) => Outcome::Alert(*desc),
            Op::Handshake(_) => Outcome::Refused(Fatal::UnexpectedMessage),
        };
        let last = matches!(o, Outcome::Alert(_) | Outcome::Refused(_));
        out.push(o);
        if last {
            break;
        }
    }
    out
}

/// Open `wire` with the reader of [`fixed_pair`]`(which)`, the bytes coming
/// in pieces of the `chunks` sizes (cycled; 0 counts as 1), as an HTTP/2
/// connection reads them: whole records opened, part of one kept. Stops after
/// an alert or a refusal.
pub fn open_all(which: u8, wire: &[u8], chunks: &[usize]) -> Vec<Outcome> {
    let (_, mut rx) = fixed_pair(which);
    let mut got = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < wire.len() {
        let n = chunks
            .get(k % chunks.len().max(1))
            .copied()
            .unwrap_or(wire.len())
            .max(1);
        k += 1;
        let end = (at + n).min(wire.len());
        kept.extend_from_slice(&wire[at..end]);
        at = end;
        let mut off = 0;
        while let Some(len) = RecordRx::record_len(&kept[off..]) {
            let len = match len {
                Ok(len) => len,
                Err(BadRecord(f)) => {
                    got.push(Outcome::Refused(f));
                    return got;
                }
            };
            assert!(len <= super::record::MAX_RECORD, "a record of {len} bytes");
            if kept.len() - off < len {
                break;
            }
            let record = &mut kept[off..off + len];
            let o = match rx.open(record) {
                Ok(Opened::Data(r)) => {
                    assert!(r.end <= len, "plaintext {r:?} outside its record of {len}");
                    Outcome::Data(record[r].to_vec())
                }
                Ok(Opened::KeyUpdate { requested }) => Outcome::KeyUpdate(requested),
                Ok(Opened::Alert(d)) => Outcome::Alert(d),
                Err(BadRecord(f)) => Outcome::Refused(f),
            };
            off += len;
            let last = matches!(o, Outcome::Alert(_) | Outcome::Refused(_));
            got.push(o);
            if last {
                return got;
            }
        }
        kept.drain(..off);
        // Never more than one record waits for the rest of itself.
        assert!(kept.len() < super::record::MAX_RECORD);
    }
    got
}

/// What the reader made of bytes that are `model`'s records changed
/// somewhere: exactly the model's outcomes (the change was harmless, or cut
/// the last record short), or a prefix of them and then one refusal; never
/// plaintext the client did not send.
pub fn check_changed(model: &[Outcome], got: &[Outcome]) -> Result<(), String> {
    let same = got.iter().zip(model).take_while(|(g, m)| g == m).count();
    let rest = &got[same..];
    match rest {
        [] => Ok(()),
        [Outcome::Refused(_)] => Ok(()),
        _ => Err(format!(
            "after {same} outcomes as the model, the reader made {rest:?} of records the model reads as {:?}",
            &model[same.min(model.len())..]
        )),
    }
}

/// Bytes that come in pieces, a piece per read, then "would block".
pub struct Pieces<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where each readiness event's bytes end.
    stops: Vec<usize>,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let stop = self.stops.first().copied().unwrap_or(self.bytes.len());
        if self.at >= stop {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(stop - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A lean stream of [`LeanTls::fixed`]`(which)` reading `wire` in readiness
/// events of the `events` sizes (cycled; each at most 16 KiB, under the
/// stream's input limit): what each event gave, and whether a KeyUpdate of
/// herald's own is due at the end.
pub fn read_lean(which: u8, wire: &[u8], events: &[usize]) -> (Vec<Received>, bool) {
    let (_, mut lean) = LeanTls::fixed(which);
    let mut scratch = Vec::new();
    let mut results = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < wire.len() {
        let n = events
            .get(k % events.len().max(1))
            .copied()
            .unwrap_or(wire.len())
            .clamp(1, 16 << 10);
        k += 1;
        let end = (at + n).min(wire.len());
        let mut io = Pieces {
            bytes: wire,
            at,
            stops: vec![end],
        };
        let got = lean.read_from(&mut io, &mut scratch, 1_000, 10_000_000_000);
        at = end;
        let over = got.end;
        results.push(got);
        if over {
            break;
        }
    }
    (results, lean.tx.update_pending())
}

/// Records for the fuzz target from any bytes: a byte says which kind, two
/// its length, then its bytes.
pub fn ops_from_bytes(mut b: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    while let [kind, l0, l1, rest @ ..] = b {
        let len = (usize::from(*l0) | usize::from(*l1) << 8).min(rest.len());
        let (data, tail) = rest.split_at(len);
        b = tail;
        ops.push(match kind % 8 {
            0..=3 => Op::Data(data.to_vec(), usize::from(*l1 % 32)),
            4 => Op::Data(Vec::new(), usize::from(*l0 % 8)),
            5 => Op::KeyUpdate(l0 % 2 == 1),
            6 => Op::Alert(1 + l0 % 2, *l1),
            _ => Op::Handshake(data.to_vec()),
        });
    }
    ops
}

/// The fuzz target's check, for any bytes: `[which, how, at0, at1, chunk,
/// records...]` ([`ops_from_bytes`]). The records are sealed and read in
/// pieces (`chunk`) as an HTTP/2 connection and as a lean stream read them:
/// as the model says when `how` is 0 mod 4, else with the bytes changed at
/// `at` (flipped, inserted, dropped, cut) and then a prefix and a refusal at
/// most. The records' bytes themselves, as a wire, are refused.
pub fn run_records(data: &[u8]) {
    let [which, how, at0, at1, chunk, rest @ ..] = data else {
        return;
    };
    let ops = ops_from_bytes(rest);
    let want = model(*which, &ops);
    let mut wire = seal(*which, &ops);
    let chunks = [usize::from(*chunk) * 64 + 1, 7, 16_384];
    if how % 4 == 0 || wire.is_empty() {
        assert_eq!(open_all(*which, &wire, &chunks), want);
        let (events, _) = read_lean(*which, &wire, &chunks);
        let ends = want
            .iter()
            .any(|o| matches!(o, Outcome::Alert(_) | Outcome::Refused(_)));
        assert_eq!(events.iter().any(|r| r.end), ends);
    } else {
        let at = usize::from(u16::from_le_bytes([*at0, *at1])) % wire.len();
        match how % 4 {
            1 => wire[at] ^= at0 | 1,
            2 => wire.insert(at, *at1),
            _ => wire.truncate(at),
        }
        let got = open_all(*which, &wire, &chunks);
        if let Err(e) = check_changed(&want, &got) {
            panic!("{e}");
        }
        read_lean(*which, &wire, &chunks);
    }
    let junk = open_all(*which, rest, &chunks);
    assert!(
        junk.iter().all(|o| matches!(o, Outcome::Refused(_))),
        "{junk:?}"
    );
}
