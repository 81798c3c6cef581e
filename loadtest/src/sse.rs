//! Incremental parsers for what a subscriber receives: the HTTP/1.1 response
//! head, a chunked body (`Transfer-Encoding: chunked`, as nginx/nchan may send)
//! and the `text/event-stream` format itself.
//!
//! The SSE parser follows the WHATWG "event stream interpretation": lines end
//! in LF, CR or CRLF (a CRLF may be split across two reads), a leading BOM is
//! dropped, `:` starts a comment, `data:` lines are joined with LF, `event:`,
//! `id:` (ignored when it contains NUL) and `retry:` (digits only) are kept,
//! other fields are ignored, and a blank line dispatches the event when its
//! data buffer is not empty.
//!
//! State per connection stays small: the caller reads into one buffer per
//! thread and feeds slices of it; the parser only keeps the partial last line
//! of a read, the data and event-type buffers of the event being built and
//! the last event id (all empty `Vec`s, i.e. no allocation, until used).

/// One dispatched event. `event` is `message` when no `event:` field was seen.
/// (The harness matches on `data` only; `event` and `id` complete the API.)
#[derive(Debug)]
pub struct Event<'a> {
    #[allow(dead_code)]
    pub event: &'a [u8],
    pub data: &'a [u8],
    #[allow(dead_code)]
    pub id: &'a [u8],
}

/// Longest line kept across reads (a server sending longer lines is broken
/// for this harness's purposes).
pub const MAX_LINE: usize = 1 << 20;

/// Error: a line, or an event's data, longer than [`MAX_LINE`].
#[derive(Debug, PartialEq, Eq)]
pub struct TooLong;

/// The incremental `text/event-stream` parser (one per connection).
#[derive(Default, Debug)]
pub struct SseParser {
    /// Bytes of the current, unterminated line (only across reads).
    partial: Vec<u8>,
    /// Data buffer of the event being built (each `data:` value + LF).
    data: Vec<u8>,
    /// Event-type buffer of the event being built.
    event: Vec<u8>,
    /// Last event id.
    id: Vec<u8>,
    /// Reconnection time from the last valid `retry:` field.
    pub retry: Option<u32>,
    /// The previous read ended in CR: skip one LF at the start of the next.
    skip_lf: bool,
    /// Some line has been processed (BOM only stripped before the first).
    started: bool,
    /// Comment lines seen.
    pub comments: u32,
}

impl SseParser {
    /// Feeds bytes; calls `on_event` for each dispatched event.
    pub fn feed<F: FnMut(&Event)>(
        &mut self,
        mut input: &[u8],
        on_event: &mut F,
    ) -> Result<(), TooLong> {
        if input.is_empty() {
            return Ok(());
        }
        if self.skip_lf {
            self.skip_lf = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            let Some(p) = memchr::memchr2(b'\n', b'\r', input) else {
                if self.partial.len() + input.len() > MAX_LINE {
                    return Err(TooLong);
                }
                self.partial.extend_from_slice(input);
                return Ok(());
            };
            if self.partial.is_empty() {
                // Fast path for the common event, a lone `data:` line followed
                // by a blank line (LF endings) in this read: dispatched from the
                // read buffer, without copying the data into `self.data`.
                if self.started
                    && self.data.is_empty()
                    && input[p] == b'\n'
                    && input.get(p + 1) == Some(&b'\n')
                {
                    if let Some(v) = input[..p].strip_prefix(b"data:") {
                        self.emit(v.strip_prefix(b" ").unwrap_or(v), on_event);
                        self.event.clear();
                        input = &input[p + 2..];
                        continue;
                    }
                }
                self.line(&input[..p], on_event)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..p]);
                let r = self.line(&line, on_event);
                line.clear();
                self.partial = line;
                r?;
            }
            let mut next = p + 1;
            if input[p] == b'\r' {
                if next < input.len() {
                    if input[next] == b'\n' {
                        next += 1;
                    }
                } else {
                    self.skip_lf = true;
                }
            }
            input = &input[next..];
        }
        Ok(())
    }

    /// Processes one complete line (without its terminator).
    fn line<F: FnMut(&Event)>(&mut self, mut line: &[u8], on_event: &mut F) -> Result<(), TooLong> {
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix(b"\xEF\xBB\xBF") {
                line = rest;
            }
        }
        if line.is_empty() {
            self.dispatch(on_event);
            return Ok(());
        }
        if line[0] == b':' {
            self.comments = self.comments.wrapping_add(1);
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() > MAX_LINE {
                    return Err(TooLong);
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch<F: FnMut(&Event)>(&mut self, on_event: &mut F) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        let data = std::mem::take(&mut self.data);
        self.emit(&data[..data.len() - 1], on_event);
        self.data = data;
        self.data.clear();
        self.event.clear();
        // Keep memory per connection small: drop a buffer a big event grew.
        if self.data.capacity() > 4096 {
            self.data = Vec::new();
        }
        if self.partial.capacity() > 4096 {
            self.partial = Vec::new();
        }
    }

    /// Hands one event with `data` to `on_event` (its type `message` unless an
    /// `event:` field named it).
    fn emit<F: FnMut(&Event)>(&self, data: &[u8], on_event: &mut F) {
        let event: &[u8] = if self.event.is_empty() {
            b"message"
        } else {
            &self.event
        };
        on_event(&Event {
            event,
            data,
            id: &self.id,
        });
    }

    /// Bytes held for an unterminated line (0 between lines).
    #[allow(dead_code)]
    pub fn pending_line(&self) -> usize {
        self.partial.len()
    }
}

/// Error in a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

/// Incremental decoder of `Transfer-Encoding: chunked` (RFC 9112 §7.1):
/// sizes in hex, chunk extensions skipped, trailers skipped.
#[derive(Debug, Default, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extension or whitespace after the size: skip to LF.
    SizeRest,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field: skip to LF.
    TrailerLine,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

impl ChunkedDecoder {
    /// Feeds bytes; calls `out` with each run of body data. Returns `true`
    /// once the terminating zero-size chunk and trailers have been read.
    pub fn feed<F: FnMut(&[u8])>(
        &mut self,
        mut input: &[u8],
        out: &mut F,
    ) -> Result<bool, BadChunk> {
        use ChunkState::*;
        while !input.is_empty() {
            match self.state {
                Data => {
                    let n = (self.remaining.min(input.len() as u64)) as usize;
                    out(&input[..n]);
                    self.remaining -= n as u64;
                    input = &input[n..];
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                Done => return Ok(true),
                _ => {}
            }
            let b = input[0];
            input = &input[1..];
            self.state = match (self.state, b) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let d = (b as char).to_digit(16).unwrap() as u64;
                    if self.remaining > (u64::MAX >> 8) {
                        return Err(BadChunk);
                    }
                    self.remaining = self.remaining * 16 + d;
                    Size
                }
                (Size, b';' | b' ' | b'\t' | b'\r') => SizeRest,
                (Size | SizeRest, b'\n') => {
                    if self.remaining == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (SizeRest, _) => SizeRest,
                (DataCr, b'\r') => DataLf,
                (DataCr | DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | EndLf, b'\n') => Done,
                (TrailerStart, _) => TrailerLine,
                (TrailerLine, b'\n') => TrailerStart,
                (TrailerLine, _) => TrailerLine,
                _ => return Err(BadChunk),
            };
        }
        Ok(self.state == Done)
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Until the server closes (herald's streams).
    Close,
    Chunked(ChunkedDecoder),
    Length(u64),
}

/// What the response head said.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// Length of the head in bytes (the body starts there).
    pub len: usize,
    /// `Connection: close` was given (or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// Error: not an HTTP/1.x response.
#[derive(Debug, PartialEq, Eq)]
pub struct BadHead;

/// Parses a response head from the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, BadHead> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadHead),
    };
    let status = resp.code.ok_or(BadHead)?;
    let mut framing = Framing::Close;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value
                .split(|&b| b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            {
                framing = Framing::Chunked(ChunkedDecoder::default());
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if !matches!(framing, Framing::Chunked(_)) {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or(BadHead)?;
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.trim_ascii();
            if v.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if v.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    // 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        framing,
        len,
        close,
    }))
}

/// Why a response head was refused by [`feed_head`].
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    Bad,
    TooLarge,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadError::Bad => "bad response head",
            HeadError::TooLarge => "response head too large",
        })
    }
}

/// Feeds one read to a response head that may arrive in pieces: `held` keeps an
/// unfinished head between reads (at most `max` bytes). `Ok(None)`: more is
/// needed; `Ok(Some((head, body)))`: the head and the body bytes that came with it
/// (`held` is left as it was, for the caller to drop or reuse).
pub fn feed_head<'a>(
    held: &'a mut Vec<u8>,
    data: &'a [u8],
    max: usize,
) -> Result<Option<(Head, &'a [u8])>, HeadError> {
    if held.is_empty() {
        // The common case: the whole head in one read, nothing copied.
        return match parse_head(data).map_err(|_| HeadError::Bad)? {
            Some(h) => {
                let body = &data[h.len..];
                Ok(Some((h, body)))
            }
            None if data.len() > max => Err(HeadError::TooLarge),
            None => {
                held.extend_from_slice(data);
                Ok(None)
            }
        };
    }
    held.extend_from_slice(data);
    let buf: &'a Vec<u8> = held;
    match parse_head(buf).map_err(|_| HeadError::Bad)? {
        Some(h) => {
            let body = &buf[h.len..];
            Ok(Some((h, body)))
        }
        None if buf.len() > max => Err(HeadError::TooLarge),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Ev {
        event: String,
        data: String,
        id: String,
    }

    fn parse_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<Ev>, SseParser) {
        let mut p = SseParser::default();
        let mut evs = Vec::new();
        let mut cb = |e: &Event| {
            evs.push(Ev {
                event: String::from_utf8_lossy(e.event).into(),
                data: String::from_utf8_lossy(e.data).into(),
                id: String::from_utf8_lossy(e.id).into(),
            })
        };
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            p.feed(&input[last..c], &mut cb).unwrap();
            last = c;
        }
        (evs, p)
    }

    fn parse(input: &[u8]) -> Vec<Ev> {
        parse_in_pieces(input, &[]).0
    }

    fn ev(event: &str, data: &str, id: &str) -> Ev {
        Ev {
            event: event.into(),
            data: data.into(),
            id: id.into(),
        }
    }

    #[test]
    fn line_endings_lf_cr_crlf() {
        let want = vec![ev("message", "a", ""), ev("x", "b", "")];
        assert_eq!(parse(b"data: a\n\nevent: x\ndata: b\n\n"), want);
        assert_eq!(parse(b"data: a\r\revent: x\rdata: b\r\r"), want);
        assert_eq!(parse(b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n"), want);
        // Mixed.
        assert_eq!(parse(b"data: a\r\n\nevent: x\rdata: b\n\r\n"), want);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input: &[u8] = b"\xEF\xBB\xBFretry: 2500\r\nevent: CONNECTED\r\ndata: {\"a\":1}\r\n\r\n: hi\r\rid: 7\ndata: l1\rdata: l2\r\ndata: l3\n\r\ndata\n\ndata:  two spaces\r\n\r\n";
        let want = vec![
            ev("CONNECTED", "{\"a\":1}", ""),
            ev("message", "l1\nl2\nl3", "7"),
            ev("message", "", "7"),
            ev("message", " two spaces", "7"),
        ];
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (got, p) = parse_in_pieces(input, &[a, b]);
                assert_eq!(got, want, "cuts at {a},{b}");
                assert_eq!(p.retry, Some(2500));
                assert_eq!(p.comments, 1);
                assert_eq!(p.pending_line(), 0);
            }
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_in_pieces(input, &cuts).0, want);
    }

    #[test]
    fn crlf_split_across_reads_is_one_line_end() {
        // "data: a\r" | "\n\r" | "\n": CRLF CRLF, one event, no spurious blank line.
        let (got, _) = parse_in_pieces(b"data: a\r\n\r\ndata: b\r\n\r\n", &[8, 10]);
        assert_eq!(got, vec![ev("message", "a", ""), ev("message", "b", "")]);
    }

    #[test]
    fn multi_line_data_and_fields() {
        assert_eq!(
            parse(b"data:first\ndata: second\ndata\ndata:  third\n\n"),
            vec![ev("message", "first\nsecond\n\n third", "")]
        );
        // Unknown fields and comment lines are ignored; no data means no event,
        // and the event type does not leak into the next event.
        assert_eq!(
            parse(b":comment\nfoo: bar\nevent: HEARTBEAT\n\ndata: x\n\n"),
            vec![ev("message", "x", "")]
        );
        // id persists across events; an id containing NUL is ignored.
        assert_eq!(
            parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n"),
            vec![
                ev("message", "a", "1"),
                ev("message", "b", "1"),
                ev("message", "c", "1"),
                ev("message", "d", ""),
            ]
        );
        // Trailing data without a blank line is not dispatched.
        assert_eq!(parse(b"data: a\n"), vec![]);
    }

    #[test]
    fn retry_digits_only() {
        let (_, p) = parse_in_pieces(b"retry: 12a\n", &[]);
        assert_eq!(p.retry, None);
        let (_, p) = parse_in_pieces(b"retry: 300\nretry: x\n", &[]);
        assert_eq!(p.retry, Some(300));
    }

    #[test]
    fn bom_only_at_start() {
        assert_eq!(
            parse(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"),
            vec![ev("message", "a", "")]
        );
    }

    fn dechunk(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), BadChunk> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut done = false;
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            done = d.feed(&input[last..c], &mut |b: &[u8]| out.extend_from_slice(b))?;
            last = c;
        }
        Ok((out, done))
    }

    #[test]
    fn chunked_decoding() {
        let body = b"7\r\ndata: a\r\n2;ext=1\r\n\n\n\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let (out, done) = dechunk(body, &[a, b]).unwrap();
                assert_eq!(out, b"data: a\n\nabcdefghijklmnopqrstuvwxyz");
                assert!(done);
            }
        }
        // Open-ended stream: not done.
        let (out, done) = dechunk(b"5\r\nhello\r\n3\r\nabc", &[]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"helloabc"[..], false));
        // Bad framing.
        assert!(dechunk(b"zz\r\n", &[]).is_err());
        assert!(dechunk(b"2\r\nabX", &[]).is_err());
        assert!(dechunk(b"ffffffffffffffffff\r\n", &[]).is_err());
    }

    #[test]
    fn chunked_into_sse() {
        let body = b"d\r\ndata: T1S0P\n\n\r\n2\r\nda\r\n";
        let mut d = ChunkedDecoder::default();
        let mut p = SseParser::default();
        let mut got = Vec::new();
        d.feed(body, &mut |b: &[u8]| {
            p.feed(b, &mut |e: &Event| got.push(e.data.to_vec()))
                .unwrap()
        })
        .unwrap();
        assert_eq!(got, vec![b"T1S0P".to_vec()]);
        assert_eq!(p.pending_line(), 2);
    }

    #[test]
    fn response_heads() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Ty")
            .unwrap()
            .is_none());
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert!(matches!(h.framing, Framing::Close));
        assert_eq!(h.len, 52);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)));
        let h = parse_head(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 403);
        assert!(matches!(h.framing, Framing::Length(12)));
        assert!(h.close);
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
