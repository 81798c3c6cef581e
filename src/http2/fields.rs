//! A request's header fields as HPACK decodes them, checked as RFC 9113 §8.2
//! and §8.3 ask. A request that breaks a rule is *malformed*: a stream error
//! (its stream is reset with PROTOCOL_ERROR), never the connection's, since
//! the other streams on it (SSE streams, most often) did nothing wrong.

use bytes::Bytes;
use h2_hpack::Header;
use http::{HeaderMap, Method, Request};

/// A request's fields as they are decoded, then [`Fields::request`].
#[derive(Default)]
pub struct Fields {
    method: Option<Method>,
    scheme: bool,
    authority: bool,
    path: Option<h2_hpack::BytesStr>,
    headers: HeaderMap,
    /// The header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    pub size: usize,
    /// Over the limit: counted, not kept (the request is answered 431).
    pub too_large: bool,
    malformed: bool,
    regular_seen: bool,
    content_length: Option<u64>,
}

/// A request whose fields are well formed.
pub struct Head {
    pub parts: http::request::Parts,
    /// `content-length`, which the DATA frames must add up to (§8.1.1).
    pub content_length: Option<u64>,
}

impl Fields {
    /// Take one decoded field; `max` is `--max-header-bytes`.
    pub fn add(&mut self, h: Header, max: usize) {
        self.size += h.len();
        if self.size > max {
            self.too_large = true;
            return;
        }
        let pseudo = !matches!(h, Header::Field { .. });
        if pseudo && self.regular_seen {
            // Pseudo-header fields come first (§8.3).
            self.malformed = true;
        }
        match h {
            Header::Method(m) => self.malformed |= self.method.replace(m).is_some(),
            Header::Scheme(s) => {
                self.malformed |= s.is_empty() || std::mem::replace(&mut self.scheme, true);
            }
            Header::Authority(_) => {
                self.malformed |= std::mem::replace(&mut self.authority, true);
            }
            Header::Path(p) => {
                self.malformed |= p.is_empty();
                self.malformed |= self.path.replace(p).is_some();
            }
            // Extended CONNECT is not offered; `:status` is a response's; a
            // field HTTP/2 refuses (an uppercase name, an unknown
            // pseudo-header, a value with CR, LF or NUL) came through the
            // decoder as `Invalid`, its size counted above.
            Header::Protocol(_) | Header::Status(_) | Header::Invalid { .. } => {
                self.malformed = true
            }
            Header::Field { name, value } => {
                self.regular_seen = true;
                self.malformed |= !field_ok(&name, &value);
                if name == http::header::CONTENT_LENGTH {
                    match parse_length(value.as_bytes()) {
                        // Repeated values must agree (RFC 9110 §8.6).
                        Some(n) if self.content_length.is_none_or(|m| m == n) => {
                            self.content_length = Some(n)
                        }
                        _ => self.malformed = true,
                    }
                }
                if self.headers.try_append(name, value).is_err() {
                    // More distinct names than a header map holds.
                    self.too_large = true;
                }
            }
        }
    }

    /// The request, or `None` when it is malformed.
    pub fn request(self) -> Option<Head> {
        if self.malformed || !self.scheme {
            return None;
        }
        let method = self.method?;
        if method == Method::CONNECT {
            return None;
        }
        let path = self.path?;
        let ok_path = path.starts_with('/') || (method == Method::OPTIONS && &*path == "*");
        if !ok_path {
            return None;
        }
        let uri = http::Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes())).ok()?;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = http::Version::HTTP_2;
        parts.headers = self.headers;
        Some(Head {
            parts,
            content_length: self.content_length,
        })
    }

    /// Whether these fields are acceptable trailers: regular fields only
    /// (§8.1).
    pub fn trailers_ok(&self) -> bool {
        !self.malformed
            && self.method.is_none()
            && !self.scheme
            && !self.authority
            && self.path.is_none()
    }

    /// Mark the request malformed (a field the decoder could not accept).
    pub fn malformed(&mut self, size: usize) {
        self.size += size;
        self.malformed = true;
    }
}

/// A regular field HTTP/2 allows in a request (§8.2.1, §8.2.2): no
/// connection-specific field, `te` only as `trailers`, no whitespace around a
/// value (the decoder already refused uppercase names and CR, LF and NUL).
fn field_ok(name: &http::HeaderName, value: &http::HeaderValue) -> bool {
    let connection_specific = matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    ) || (name == http::header::TE && value != "trailers");
    let v = value.as_bytes();
    let padded = matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'));
    !connection_specific && !padded
}

/// A `content-length` value: digits only.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn field(n: &str, v: &str) -> Header {
        Header::Field {
            name: HeaderName::from_bytes(n.as_bytes()).unwrap(),
            value: HeaderValue::from_str(v).unwrap(),
        }
    }

    fn bs(s: &'static str) -> h2_hpack::BytesStr {
        h2_hpack::BytesStr::try_from(Bytes::from_static(s.as_bytes())).unwrap()
    }

    fn base() -> Fields {
        let mut f = Fields::default();
        f.add(Header::Method(Method::POST), 16384);
        f.add(Header::Scheme(bs("https")), 16384);
        f.add(Header::Path(bs("/api/broadcast")), 16384);
        f
    }

    #[test]
    fn a_plain_request_passes_with_its_length() {
        let mut f = base();
        f.add(field("content-length", "12"), 16384);
        f.add(field("content-length", "12"), 16384);
        let head = f.request().expect("well formed");
        assert_eq!(head.content_length, Some(12));
        assert_eq!(head.parts.uri.path(), "/api/broadcast");
    }

    #[test]
    fn malformed_requests_are_refused() {
        type Case = Box<dyn Fn(&mut Fields)>;
        let cases: Vec<Case> = vec![
            Box::new(|f| f.add(field("connection", "close"), 16384)),
            Box::new(|f| f.add(field("te", "gzip"), 16384)),
            Box::new(|f| f.add(field("x", " padded"), 16384)),
            Box::new(|f| f.add(field("content-length", "1x"), 16384)),
            Box::new(|f| {
                f.add(field("content-length", "1"), 16384);
                f.add(field("content-length", "2"), 16384)
            }),
            Box::new(|f| {
                f.add(field("x", "y"), 16384);
                f.add(Header::Authority(bs("a")), 16384)
            }),
            Box::new(|f| f.add(Header::Method(Method::GET), 16384)),
            Box::new(|f| f.add(Header::Path(bs("/x")), 16384)),
            Box::new(|f| f.malformed(40)),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut f = base();
            case(&mut f);
            assert!(f.request().is_none(), "case {i}");
        }
        let mut f = Fields::default();
        f.add(Header::Method(Method::GET), 16384);
        f.add(Header::Path(bs("/")), 16384);
        assert!(f.request().is_none(), "no :scheme");
        let mut f = Fields::default();
        f.add(Header::Method(Method::GET), 16384);
        f.add(Header::Scheme(bs("https")), 16384);
        f.add(Header::Path(bs("x")), 16384);
        assert!(f.request().is_none(), "a path not starting with /");
    }

    #[test]
    fn too_many_bytes_are_counted_not_kept() {
        let mut f = base();
        for i in 0..100 {
            f.add(field(&format!("x-{i}"), &"v".repeat(100)), 4096);
        }
        assert!(f.too_large);
        assert!(f.size > 4096);
    }
}
