//! HPACK (RFC 7541) for the raw HTTP/2 client of the conformance tests: an
//! encoder that writes any representation on request (indexed, literal with,
//! without or never indexing, dynamic table size updates; strings with or
//! without Huffman coding), and a decoder with a dynamic table that reports
//! how a block was written (did it open with a size update, did it index
//! anything), so the tests can check herald as an encoder too.

use std::collections::HashMap;
use std::sync::OnceLock;

/// How a literal field is to be indexed (RFC 7541 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lit {
    /// §6.2.1: 01xxxxxx, 6-bit prefix.
    Incremental,
    /// §6.2.2: 0000xxxx, 4-bit prefix.
    Without,
    /// §6.2.3: 0001xxxx, 4-bit prefix.
    Never,
}

/// A literal's name: an index into the tables, or a new name.
#[derive(Debug, Clone, Copy)]
pub enum Name<'a> {
    Index(usize),
    New(&'a str),
}

/// One representation in a header block.
#[derive(Debug, Clone, Copy)]
pub enum Rep<'a> {
    /// §6.1.
    Indexed(usize),
    /// §6.2; `huffman` codes both strings.
    Literal {
        lit: Lit,
        name: Name<'a>,
        value: &'a str,
        huffman: bool,
    },
    /// §6.3.
    SizeUpdate(usize),
    /// Bytes as given (a deliberately broken representation).
    Raw(&'a [u8]),
}

/// An integer with an `n`-bit prefix; `first` holds the bits above it (§5.1).
pub fn int(out: &mut Vec<u8>, n: u8, first: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = value - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal, Huffman-coded or not (§5.2).
pub fn string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
    if huffman {
        let coded = huffman_encode(s);
        int(out, 7, 0x80, coded.len());
        out.extend_from_slice(&coded);
    } else {
        int(out, 7, 0, s.len());
        out.extend_from_slice(s);
    }
}

/// A header block of `reps`.
pub fn encode(reps: &[Rep]) -> Vec<u8> {
    let mut out = Vec::new();
    for rep in reps {
        match *rep {
            Rep::Indexed(i) => int(&mut out, 7, 0x80, i),
            Rep::SizeUpdate(n) => int(&mut out, 5, 0x20, n),
            Rep::Raw(b) => out.extend_from_slice(b),
            Rep::Literal {
                lit,
                name,
                value,
                huffman,
            } => {
                let (n, first) = match lit {
                    Lit::Incremental => (6, 0x40),
                    Lit::Without => (4, 0x00),
                    Lit::Never => (4, 0x10),
                };
                match name {
                    Name::Index(i) => int(&mut out, n, first, i),
                    Name::New(s) => {
                        out.push(first);
                        string(&mut out, s.as_bytes(), huffman);
                    }
                }
                string(&mut out, value.as_bytes(), huffman);
            }
        }
    }
    out
}

/// A block of literals without indexing, new names, no Huffman coding: the
/// plainest encoding, which leaves no state in the decoder.
pub fn plain(fields: &[(&str, &str)]) -> Vec<u8> {
    let reps: Vec<Rep> = fields
        .iter()
        .map(|(n, v)| Rep::Literal {
            lit: Lit::Without,
            name: Name::New(n),
            value: v,
            huffman: false,
        })
        .collect();
    encode(&reps)
}

/// Huffman coding (§5.2, the code of Appendix B), padded with the EOS prefix.
pub fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut n) = (0u64, 0u32);
    for &b in s {
        let len = u32::from(ENCODE_CODE_LENGTHS[b as usize]);
        bits = (bits << len) | u64::from(ENCODE_CODES[b as usize]);
        n += len;
        while n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
        bits &= (1 << n) - 1;
    }
    if n > 0 {
        let pad = 8 - n;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
    out
}

/// Huffman decoding with the checks of §5.2: padding of at most 7 bits, all
/// ones; no EOS symbol.
pub fn huffman_decode(s: &[u8]) -> Result<Vec<u8>, String> {
    static CODES: OnceLock<HashMap<(u32, u32), u16>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        let mut m: HashMap<(u32, u32), u16> = (0..256)
            .map(|i| {
                (
                    (u32::from(ENCODE_CODE_LENGTHS[i]), ENCODE_CODES[i]),
                    i as u16,
                )
            })
            .collect();
        m.insert((30, 0x3fff_ffff), 256);
        m
    });
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u32);
    for &byte in s {
        for i in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> i) & 1);
            len += 1;
            if let Some(&sym) = codes.get(&(len, code)) {
                if sym == 256 {
                    return Err("Huffman string holds EOS".into());
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len > 30 {
                return Err("not a Huffman code".into());
            }
        }
    }
    if len > 7 {
        return Err(format!("Huffman padding of {len} bits"));
    }
    if code != (1 << len) - 1 {
        return Err("Huffman padding is not EOS's prefix".into());
    }
    Ok(out)
}

/// RFC 7541 Appendix A.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A decoded block and how it was written.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    pub fields: Vec<(String, String)>,
    /// Its first byte (0x20: a Dynamic Table Size Update to 0).
    pub first_byte: Option<u8>,
    /// The sizes of its Dynamic Table Size Updates, in order.
    pub size_updates: Vec<usize>,
    /// It added an entry to the dynamic table, or referred to one.
    pub indexes: bool,
}

/// A decoder whose dynamic table may grow to `limit` (the
/// SETTINGS_HEADER_TABLE_SIZE this side announced).
pub struct Decoder {
    table: std::collections::VecDeque<(String, String)>,
    size: usize,
    max: usize,
    pub limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: Default::default(),
            size: 0,
            max: limit,
            limit,
        }
    }

    fn get(&self, i: usize) -> Result<(String, String), String> {
        match i {
            0 => Err("index 0".into()),
            1..=61 => Ok((STATIC[i - 1].0.into(), STATIC[i - 1].1.into())),
            _ => self
                .table
                .get(i - 62)
                .cloned()
                .ok_or_else(|| format!("index {i} past the tables")),
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let (n, v) = self.table.pop_back().expect("entries while size > 0");
            self.size -= n.len() + v.len() + 32;
        }
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Decoded, String> {
        let mut d = Decoded {
            first_byte: block.first().copied(),
            ..Decoded::default()
        };
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let i = read_int(block, &mut at, 7)?;
                d.indexes |= i > 61;
                d.fields.push(self.get(i)?);
                fields_seen = true;
            } else if b & 0xe0 == 0x20 {
                if fields_seen {
                    return Err("size update after a field".into());
                }
                let n = read_int(block, &mut at, 5)?;
                if n > self.limit {
                    return Err(format!("size update to {n} over {}", self.limit));
                }
                d.size_updates.push(n);
                self.max = n;
                self.evict();
            } else {
                let (n, incremental) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = read_int(block, &mut at, n)?;
                let name = if i == 0 {
                    read_string(block, &mut at)?
                } else {
                    d.indexes |= i > 61;
                    self.get(i)?.0
                };
                let value = read_string(block, &mut at)?;
                if incremental {
                    d.indexes = true;
                    self.size += name.len() + value.len() + 32;
                    self.table.push_front((name.clone(), value.clone()));
                    self.evict();
                }
                d.fields.push((name, value));
                fields_seen = true;
            }
        }
        Ok(d)
    }
}

fn read_int(b: &[u8], at: &mut usize, n: u8) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(b[*at]) & max;
    *at += 1;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at).ok_or("integer cut short")?;
        *at += 1;
        v += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

fn read_string(b: &[u8], at: &mut usize) -> Result<String, String> {
    let huffman = b.get(*at).ok_or("string missing")? & 0x80 != 0;
    let len = read_int(b, at, 7)?;
    let raw = b.get(*at..*at + len).ok_or("string cut short")?;
    *at += len;
    let bytes = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

// RFC 7541 Appendix B, as the h2 crate (vendor/h2) tabulates it: each byte's
// code and its length in bits. EOS is 0x3fffffff, 30 bits.
const ENCODE_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const ENCODE_CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];
