//! The payload codec: `T<send_ns>S<seq>P<padding>`.
//!
//! The publisher stamps each event with the `CLOCK_MONOTONIC` time taken just
//! before its request is written (`send_ns`) and a sequence number (`seq`,
//! from 0), padded with `x` up to the requested size. Subscribers find the
//! stamp in an event's data (anywhere in it, so a server that wraps the data,
//! in JSON say, still works), which gives the latency and exact loss,
//! duplicate and reorder accounting. Events without a stamp (herald's
//! `CONNECTED`, `HEARTBEAT`, …) are not ours and are ignored.

use crate::target::push_u64;

/// A decoded stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub send_ns: u64,
    pub seq: u64,
}

/// Writes `T<send_ns>S<seq>P` then `x` padding up to `size` bytes in total
/// (no padding when the stamp alone is longer) into `out` (cleared first).
pub fn encode(out: &mut Vec<u8>, send_ns: u64, seq: u64, size: usize) {
    out.clear();
    out.push(b'T');
    push_u64(out, send_ns);
    out.push(b'S');
    push_u64(out, seq);
    out.push(b'P');
    if out.len() < size {
        out.resize(size, b'x');
    }
}

/// Finds and decodes the first stamp in `data`.
#[inline]
pub fn decode(data: &[u8]) -> Option<Stamp> {
    // Fast path: the data is exactly our payload.
    if let Some(s) = decode_at(data) {
        return Some(s);
    }
    let mut from = 1;
    while from < data.len() {
        let p = memchr::memchr(b'T', &data[from..])? + from;
        if let Some(s) = decode_at(&data[p..]) {
            return Some(s);
        }
        from = p + 1;
    }
    None
}

/// Decodes a stamp at the very start of `d`.
fn decode_at(d: &[u8]) -> Option<Stamp> {
    if d.first() != Some(&b'T') {
        return None;
    }
    let (send_ns, n1) = digits(&d[1..])?;
    let rest = &d[1 + n1..];
    if rest.first() != Some(&b'S') {
        return None;
    }
    let (seq, n2) = digits(&rest[1..])?;
    if rest.get(1 + n2) != Some(&b'P') {
        return None;
    }
    Some(Stamp { send_ns, seq })
}

/// Parses 1 to 20 leading ASCII digits (no overflow); returns value and length.
fn digits(d: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in d {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut b = Vec::new();
        encode(&mut b, 123_456_789, 42, 100);
        assert_eq!(b.len(), 100);
        assert!(b.starts_with(b"T123456789S42P"));
        assert!(b[14..].iter().all(|&c| c == b'x'));
        assert_eq!(
            decode(&b),
            Some(Stamp {
                send_ns: 123_456_789,
                seq: 42
            })
        );
        // Requested size smaller than the stamp: no padding, still decodable.
        encode(&mut b, u64::MAX, u64::MAX, 4);
        assert_eq!(b.len(), 1 + 20 + 1 + 20 + 1);
        assert_eq!(
            decode(&b),
            Some(Stamp {
                send_ns: u64::MAX,
                seq: u64::MAX
            })
        );
    }

    #[test]
    fn found_inside_wrapped_data() {
        assert_eq!(
            decode(br#"{"msg":"TS","data":"T5S7Pxx"}"#),
            Some(Stamp { send_ns: 5, seq: 7 })
        );
        assert_eq!(decode(b"Tx T9S0P"), Some(Stamp { send_ns: 9, seq: 0 }));
    }

    #[test]
    fn not_ours() {
        for d in [
            &b""[..],
            b"1712345678901",
            br#"{"userId":"u1","connectionId":"c","podId":"TEST"}"#,
            b"T12S",
            b"T12S3",
            b"TS1P",
            b"T1SP",
            b"T99999999999999999999999S1P", // overflow
        ] {
            assert_eq!(decode(d), None, "{:?}", String::from_utf8_lossy(d));
        }
    }
}
