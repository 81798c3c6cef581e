//! Targets: loopback-only `http://` and `https://` (and `redis://`) URLs, and the templates
//! the harness fills in (`{i}` in subscribe URLs; `{payload}`, `{user}` and
//! `{seq}` in publish bodies).
//!
//! The harness only ever talks to this machine: a URL whose host is not in
//! 127.0.0.0/8 (or `localhost`) is refused before any socket is opened.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A parsed `scheme://host[:port]/path` URL whose host is on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddr,
    /// The `Host` header value (`host[:port]` as written).
    pub host: String,
    /// Path and query, starting with `/` (may still hold template placeholders).
    pub path: String,
    /// `https://`: TLS ([`crate::tls`]).
    pub tls: bool,
}

/// Parses `url` with the given scheme (`http` or `redis`), refusing any host
/// outside 127.0.0.0/8.
pub fn parse_url(url: &str, scheme: &str, default_port: u16) -> Result<Url, String> {
    // `http` also takes `https` (TLS, port 443 by default).
    let tls = scheme == "http" && url.starts_with("https://");
    let (scheme, default_port) = if tls {
        ("https", 443)
    } else {
        (scheme, default_port)
    };
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url}: only {scheme}:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, "/"),
    };
    // Strip userinfo (redis://:password@host is not supported: no credentials).
    if authority.contains('@') {
        return Err(format!("{url}: credentials in URLs are not supported"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        _ => (authority, default_port),
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>()
            .map_err(|_| format!("{url}: host must be a 127.x.x.x address or localhost"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{url}: refusing a non-loopback target ({ip}); this harness only targets 127.0.0.0/8"
        ));
    }
    if port == 0 {
        return Err(format!("{url}: port 0"));
    }
    Ok(Url {
        addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
        host: authority.to_string(),
        path: path.to_string(),
        tls,
    })
}

/// A string with placeholders, split once so that filling it in is a few
/// `extend_from_slice` calls.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Lit(Vec<u8>),
    Index,
    Payload,
    User,
    Seq,
}

/// Values substituted into a template.
#[derive(Clone, Copy, Default)]
pub struct Vars<'a> {
    pub index: u64,
    pub payload: &'a [u8],
    pub user: u64,
    pub seq: u64,
}

impl Template {
    /// Splits `s` at `{i}`, `{payload}`, `{user}` and `{seq}`.
    pub fn new(s: &str) -> Template {
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let found = [
                ("{i}", Part::Index),
                ("{payload}", Part::Payload),
                ("{user}", Part::User),
                ("{seq}", Part::Seq),
            ]
            .into_iter()
            .find(|(k, _)| rest.starts_with(k));
            if let Some((k, part)) = found {
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(part);
                rest = &rest[k.len()..];
            } else {
                let c = rest.chars().next().unwrap();
                let mut b = [0u8; 4];
                lit.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Template { parts }
    }

    /// Whether the template contains `placeholder` (`{i}`, `{payload}`, …).
    pub fn has(&self, placeholder: &str) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                (p, placeholder),
                (Part::Index, "{i}")
                    | (Part::Payload, "{payload}")
                    | (Part::User, "{user}")
                    | (Part::Seq, "{seq}")
            )
        })
    }

    /// Appends the filled-in template to `out`.
    pub fn render(&self, vars: &Vars, out: &mut Vec<u8>) {
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Index => push_u64(out, vars.index),
                Part::Payload => out.extend_from_slice(vars.payload),
                Part::User => push_u64(out, vars.user),
                Part::Seq => push_u64(out, vars.seq),
            }
        }
    }
}

/// Appends the decimal form of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Parses a `K: V` header argument.
pub fn parse_header(h: &str) -> Result<(String, String), String> {
    let (k, v) = h
        .split_once(':')
        .ok_or_else(|| format!("header {h:?}: expected 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty() || k.bytes().any(|b| b <= b' ' || b == b':' || b >= 0x7f) {
        return Err(format!("header {h:?}: bad name"));
    }
    let v = v.trim();
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("header {h:?}: bad value"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        let u = parse_url("http://127.0.0.1:8080/api/x?userId=u{i}", "http", 80).unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u.host, "127.0.0.1:8080");
        assert_eq!(u.path, "/api/x?userId=u{i}");
        let u = parse_url("http://localhost:9", "http", 80).unwrap();
        assert_eq!(u.path, "/");
        assert!(parse_url("http://127.9.9.9/", "http", 80).is_ok());
        assert!(parse_url("http://10.0.0.1:80/", "http", 80).is_err());
        assert!(parse_url("http://192.168.1.2/", "http", 80).is_err());
        assert!(parse_url("http://example.com/", "http", 80).is_err());
        let u = parse_url("https://127.0.0.1/", "http", 80).unwrap();
        assert!(u.tls && u.addr.port() == 443);
        assert!(parse_url("https://127.0.0.1/", "redis", 6379).is_err());
        assert!(parse_url("http://u:p@127.0.0.1/", "http", 80).is_err());
        let r = parse_url("redis://127.0.0.1", "redis", 6379).unwrap();
        assert_eq!(r.addr.port(), 6379);
    }

    #[test]
    fn template_fill() {
        let t = Template::new(r#"{"data":"{payload}","target":{"users":["u{user}"]},"n":{seq}}"#);
        let mut out = Vec::new();
        t.render(
            &Vars {
                index: 0,
                payload: b"T1S2P",
                user: 17,
                seq: 42,
            },
            &mut out,
        );
        assert_eq!(
            out,
            br#"{"data":"T1S2P","target":{"users":["u17"]},"n":42}"#.to_vec()
        );
        assert!(t.has("{user}") && !t.has("{i}"));
        let t = Template::new("/sub/{i}é");
        let mut out = Vec::new();
        t.render(
            &Vars {
                index: 1234567,
                ..Default::default()
            },
            &mut out,
        );
        assert_eq!(out, "/sub/1234567é".as_bytes());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer x").unwrap(),
            ("Authorization".into(), "Bearer x".into())
        );
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("Bad Name: v").is_err());
    }
}
