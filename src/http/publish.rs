//! The publish body: `{"event", "data", "target", "ttlSeconds"}`, or a JSON
//! array of 1–1,000 of them (a batch), validated. Pure.
//! `data` may be a string (sent as is) or any JSON value (sent compact, on one
//! line); `event` defaults to `message`; `target` is `"all"`, `{"users":[…]}` or
//! `{"topics":[…]}`; `ttlSeconds` (default 86400) bounds how long a user-targeted
//! event waits for an offline user.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::params::valid_name;
use crate::error::ApiError;
use crate::event::Target;
pub use crate::seam::{PublishRef, PublishRequest};

/// Default lifetime of a pending event.
pub const DEFAULT_TTL_SECONDS: u64 = 86_400;

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, msg)
}

/// Most publish objects in one batch.
pub const MAX_BATCH: usize = 1000;

/// A publish body: one event (borrowing from the body where it can), or a
/// batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishBody<'a> {
    One(PublishRef<'a>),
    /// In the array's order; every element validated.
    Batch(Vec<PublishRequest>),
}

impl PublishBody<'_> {
    /// The same body, owning all it holds (to outlive the request's bytes).
    pub fn into_owned(self) -> PublishBody<'static> {
        match self {
            PublishBody::One(p) => PublishBody::One(p.into_owned().into()),
            PublishBody::Batch(items) => PublishBody::Batch(items),
        }
    }
}

/// Parse a publish body: an object, or an array of 1–1,000 objects, all
/// validated before anything is published (a bad element's error names its
/// index, `[3]`).
///
/// Every publish comes through here, so the body is read without building a
/// JSON tree: the object's fields are borrowed raw and each is parsed for what
/// it must be (only an object target, or non-string `data`, is parsed whole).
pub fn parse_body(body: &[u8]) -> Result<PublishBody<'_>, ApiError> {
    parse_body_with(body, true)
}

/// [`parse_body`], with or without the [`plain_object`] scan (the tests check
/// that both ways give the same answers).
fn parse_body_with(body: &[u8], scan: bool) -> Result<PublishBody<'_>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        // The common case, one object. Checked as UTF-8 once, so that the
        // borrowed fields need no check each.
        let text = std::str::from_utf8(body).ok();
        if let Some(f) = text.filter(|_| scan).and_then(plain_object) {
            return fields(f).map(PublishBody::One);
        }
        let parsed = match text {
            Some(text) => serde_json::from_str::<Fields>(text),
            None => serde_json::from_slice::<Fields>(body),
        };
        return match parsed {
            Ok(f) => fields(f.raw()).map(PublishBody::One),
            Err(e) => Err(not_an_object(body, e)),
        };
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(invalid_json)?;
    if !raw.get().starts_with('[') {
        return request(raw).map(|p| PublishBody::One(p.into()));
    }
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(invalid_json)?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(bad(
            "invalid_batch",
            format!(
                "a batch is an array of 1 to {MAX_BATCH} publish objects, not {}",
                items.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let r = request(item).map_err(|e| ApiError {
            message: format!("[{i}] {}", e.message),
            ..e
        })?;
        out.push(r);
    }
    Ok(PublishBody::Batch(out))
}

/// Parse a publish body that must be one object (not a batch), through the
/// same path as [`parse_body`] (the fuzz target's entry point).
pub fn parse(body: &[u8]) -> Result<PublishRequest, ApiError> {
    match parse_body(body)? {
        PublishBody::One(r) => Ok(r.into_owned()),
        PublishBody::Batch(_) => Err(bad(
            "invalid_body",
            "body must be one JSON publish object, not an array",
        )),
    }
}

/// Why a body that starts like an object is not a publish object: it is not
/// JSON at all (`invalid_json`), or not one of the expected shape.
fn not_an_object(body: &[u8], e: serde_json::Error) -> ApiError {
    match serde_json::from_slice::<&RawValue>(body) {
        Err(e) => invalid_json(e),
        Ok(_) => shape_error(e),
    }
}

/// A JSON object that is not a publish object: an unknown field is named.
fn shape_error(e: serde_json::Error) -> ApiError {
    let text = e.to_string();
    match text
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        Some((field, _)) => bad(
            "unknown_field",
            format!(
                "unknown field {field:?}: a publish object has event, data, target and ttlSeconds"
            ),
        ),
        None => bad(
            "invalid_body",
            format!("body is not a valid publish object: {text}"),
        ),
    }
}

/// Event names herald sends itself; a publish may not use them (a client
/// reloads on `RESYNC`).
const RESERVED_EVENTS: [&str; 3] = ["CONNECTED", "HEARTBEAT", "RESYNC"];

fn invalid_json(e: serde_json::Error) -> ApiError {
    bad("invalid_json", format!("body is not valid JSON: {e}"))
}

/// A publish object's fields, unparsed (an unknown field is refused: a
/// mistyped `ttl` must not silently become the default); a field given as
/// `null` is `Some("null")`, not absent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw")]
    target: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw", rename = "ttlSeconds")]
    ttl_seconds: Option<&'a RawValue>,
}

fn raw<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Fields<'a> {
    fn raw(&self) -> RawFields<'a> {
        RawFields {
            event: self.event.map(RawValue::get),
            data: self.data.map(RawValue::get),
            target: self.target.map(RawValue::get),
            ttl_seconds: self.ttl_seconds.map(RawValue::get),
        }
    }
}

/// A publish object's fields as their JSON text, each a valid JSON value.
#[derive(Debug, Default, Clone, Copy)]
struct RawFields<'a> {
    event: Option<&'a str>,
    data: Option<&'a str>,
    target: Option<&'a str>,
    ttl_seconds: Option<&'a str>,
}

/// The fields of the publish object most backends send, found in one pass
/// without serde: only herald's four keys, each once, with values that are
/// strings without escapes, whole numbers or `null`. Anything else (escapes,
/// other keys or values, a repeated key, anything invalid) is `None` and goes
/// through serde_json, which also makes every error message.
fn plain_object(text: &str) -> Option<RawFields<'_>> {
    let b = text.as_bytes();
    let ws = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    // A string without escapes from the quote at `i`: the index after its
    // closing quote. Control characters make it invalid (serde says so).
    let string_end = |i: usize| {
        let len = string_stop(b.get(i + 1..)?)?;
        (b[i + 1 + len] == b'"').then_some(i + len + 2)
    };
    let mut f = RawFields::default();
    let mut i = ws(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    if b.get(i) == Some(&b'}') {
        return (ws(i + 1) == b.len()).then_some(f);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(i)?;
        let slot = match &text[i + 1..key_end - 1] {
            "event" => &mut f.event,
            "data" => &mut f.data,
            "target" => &mut f.target,
            "ttlSeconds" => &mut f.ttl_seconds,
            _ => return None,
        };
        i = ws(key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = ws(i + 1);
        let end = match b.get(i)? {
            b'"' => string_end(i)?,
            b'n' if b[i..].starts_with(b"null") => i + 4,
            b'0' => i + 1,
            b'1'..=b'9' => i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count(),
            _ => return None,
        };
        if slot.replace(&text[i..end]).is_some() {
            return None;
        }
        i = ws(end);
        match b.get(i)? {
            b',' => i = ws(i + 1),
            b'}' => return (ws(i + 1) == b.len()).then_some(f),
            _ => return None,
        }
    }
}

/// Where a JSON string's text stops: the first `"`, `\\` or control
/// character in `b`. Eight bytes a step (SWAR): the body's data is most of
/// what is scanned on every publish.
fn string_stop(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in the lanes below `n` (exact for the lowest such lane,
    // which is the one used).
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let hit = below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1)
            | below(v, 0x20);
        if hit != 0 {
            return Some(at + hit.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

/// A field that is absent or `null`.
fn given(v: Option<&str>) -> Option<&str> {
    v.filter(|s| *s != "null")
}

/// A JSON string's text from its raw value: borrowed when it has no escapes
/// (the raw value is valid JSON, so what is between its quotes is the string
/// itself), unescaped by serde_json otherwise.
fn json_str(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    let plain =
        raw.len() >= 2 && raw.starts_with('"') && memchr::memchr(b'\\', raw.as_bytes()).is_none();
    if plain {
        return Ok(Cow::Borrowed(&raw[1..raw.len() - 1]));
    }
    serde_json::from_str::<String>(raw).map(Cow::Owned)
}

/// One publish object (valid JSON already).
fn request(raw: &RawValue) -> Result<PublishRequest, ApiError> {
    if !raw.get().starts_with('{') {
        return Err(bad(
            "invalid_body",
            "body must be a JSON object, or an array of them",
        ));
    }
    let f: Fields = serde_json::from_str(raw.get()).map_err(shape_error)?;
    fields(f.raw()).map(PublishRef::into_owned)
}

/// Validate one publish object's fields.
fn fields(f: RawFields<'_>) -> Result<PublishRef<'_>, ApiError> {
    let event = match given(f.event) {
        None => Cow::Borrowed("message"),
        Some(e) => match json_str(e) {
            Ok(s) if RESERVED_EVENTS.iter().any(|r| r.eq_ignore_ascii_case(&s)) => {
                return Err(bad(
                    "reserved_event",
                    format!(
                        "event {s:?} is one herald sends itself (CONNECTED, HEARTBEAT, RESYNC): \
                         choose another name"
                    ),
                ))
            }
            Ok(s) if valid_name(&s) => s,
            _ => {
                return Err(bad(
                    "invalid_event",
                    "event must be 1-128 bytes of letters, digits and . _ : @ -",
                ))
            }
        },
    };
    let data = match f.data {
        // Checked last (below), so the other fields' errors come first.
        None => Cow::Borrowed(""),
        // Most often a string without escapes: borrowed from the body.
        Some(d) if d.starts_with('"') => json_str(d).map_err(invalid_json)?,
        // Any other JSON value is sent compact, on one line.
        Some(d) => Cow::Owned(
            serde_json::from_str::<Value>(d)
                .map_err(invalid_json)?
                .to_string(),
        ),
    };
    let target = match given(f.target) {
        None => {
            return Err(bad(
                "missing_target",
                "target is required: \"all\", {\"users\":[…]} or {\"topics\":[…]}",
            ))
        }
        Some("\"all\"") => Target::All,
        Some(t) => target(serde_json::from_str(t).map_err(invalid_json)?)?,
    };
    let ttl_seconds = match given(f.ttl_seconds) {
        None => DEFAULT_TTL_SECONDS,
        Some(t) => serde_json::from_str::<u64>(t)
            .ok()
            .filter(|&n| n <= 365 * 86_400)
            .ok_or_else(|| {
                bad(
                    "invalid_ttl",
                    "ttlSeconds must be a whole number from 0 to 31536000",
                )
            })?,
    };
    if f.data.is_none() {
        return Err(bad(
            "missing_data",
            "data is required: a string (sent as is) or any JSON value",
        ));
    }
    Ok(PublishRef {
        event,
        data,
        target,
        ttl_seconds,
    })
}

fn target(value: Value) -> Result<Target, ApiError> {
    let invalid = || {
        bad(
            "invalid_target",
            "target must be \"all\", {\"users\":[…]} or {\"topics\":[…]}",
        )
    };
    match value {
        Value::String(s) if s == "all" => Ok(Target::All),
        Value::Object(mut obj) if obj.len() == 1 => {
            if let Some(users) = obj.remove("users") {
                Ok(Target::Users(names(users, "users")?))
            } else if let Some(topics) = obj.remove("topics") {
                Ok(Target::Topics(names(topics, "topics")?))
            } else {
                Err(invalid())
            }
        }
        _ => Err(invalid()),
    }
}

fn names(value: Value, what: &str) -> Result<Box<[Box<str>]>, ApiError> {
    let Value::Array(items) = value else {
        return Err(bad(
            "invalid_target",
            format!("target.{what} must be a non-empty array of names"),
        ));
    };
    if items.is_empty() {
        return Err(bad(
            "invalid_target",
            format!("target.{what} must be a non-empty array of names"),
        ));
    }
    let invalid =
        format!("each of target.{what} must be 1-128 bytes of letters, digits and . _ : @ -");
    let mut out: Vec<Box<str>> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(bad("invalid_target", invalid));
        };
        if !valid_name(&s) {
            return Err(bad("invalid_target", invalid));
        }
        if !out.iter().any(|have| **have == *s) {
            out.push(s.into());
        }
    }
    Ok(out.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_request() {
        let r = parse(br#"{"event":"note","data":{"a":[1, 2]},"target":{"users":["u1","u2","u1"]},"ttlSeconds":5}"#).unwrap();
        assert_eq!(r.event, "note");
        assert_eq!(r.data, r#"{"a":[1,2]}"#);
        assert_eq!(
            r.target,
            Target::Users(vec![Box::from("u1"), Box::from("u2")].into_boxed_slice())
        );
        assert_eq!(r.ttl_seconds, 5);
    }

    #[test]
    fn string_stop_finds_the_first_stop() {
        let stops = [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n'];
        for len in 0..40 {
            let text: Vec<u8> = (0..len).map(|i| b"ab c\x7f\xc3\xa9~ "[i % 8]).collect();
            assert_eq!(string_stop(&text), None, "{text:?}");
            for at in 0..len {
                for &stop in &stops {
                    let mut t = text.clone();
                    t[at] = stop;
                    // A second stop later does not hide the first.
                    if at + 3 < len {
                        t[at + 3] = b'"';
                    }
                    assert_eq!(string_stop(&t), Some(at), "{t:?}");
                }
            }
        }
    }

    /// The one-pass scan and serde_json give the same answer (value, or
    /// error code and message) on every body, and the scan takes the bodies
    /// it is for.
    #[test]
    fn plain_scan_agrees_with_serde() {
        let values = [
            "\"all\"",
            "\"x\"",
            "\"\"",
            "null",
            "0",
            "5",
            "012",
            "5.0",
            "-1",
            "1e3",
            "true",
            "{\"users\":[\"u1\"]}",
            "[1]",
            "\"a\\nb\"",
            "\"\\u0061ll\"",
            "\"ünï\"",
            "\"a\u{1}b\"",
            "\"unterminated",
            "nul",
            "nullx",
            "99999999999999999999",
        ];
        let keys = [
            "event",
            "data",
            "target",
            "ttlSeconds",
            "other",
            "d\\u0061ta",
        ];
        let mut bodies: Vec<String> = vec![
            "{}".into(),
            " { } ".into(),
            "{".into(),
            "{,}".into(),
            "{\"data\"}".into(),
            "{\"data\":}".into(),
            "{\"target\":\"all\",}".into(),
            "{\"target\":\"all\"} x".into(),
            "{\"target\":\"all\"}{}".into(),
            "\t{\r\n\"target\" :\t\"all\"\n}\n".into(),
            "{\"target\":\"all\" \"data\":\"x\"}".into(),
            "{\"target\":\"all\",\"target\":\"all\"}".into(),
        ];
        for k in keys {
            for v in values {
                bodies.push(format!("{{\"{k}\":{v}}}"));
                bodies.push(format!("{{\"target\":\"all\",\"{k}\":{v}}}"));
                bodies.push(format!("{{ \"{k}\" : {v} , \"target\" : \"all\" }}"));
            }
        }
        for e in ["\"note\"", "\"bad name\"", "null", "7"] {
            for d in ["\"T1S2Pxxxx\"", "{\"a\":1}", "null", "\"\""] {
                for t in values.iter().take(4) {
                    bodies.push(format!(
                        "{{\"event\":{e},\"data\":{d},\"target\":{t},\"ttlSeconds\":60}}"
                    ));
                }
            }
        }
        let mut scanned = 0;
        for body in &bodies {
            let fast = parse_body_with(body.as_bytes(), true);
            let slow = parse_body_with(body.as_bytes(), false);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{body}"),
                (Err(a), Err(b)) => {
                    assert_eq!((a.code, &a.message), (b.code, &b.message), "{body}")
                }
                _ => panic!("{body}: scan {fast:?}, serde {slow:?}"),
            }
            scanned += usize::from(plain_object(body).is_some());
        }
        assert!(scanned > 100, "the scan took only {scanned} bodies");
        for body in [
            r#"{"data":"T1S2Pxxxx","target":"all"}"#,
            r#"{"event":"note","data":"x","target":"all","ttlSeconds":0}"#,
            r#"{"target":"all"}"#,
        ] {
            assert!(plain_object(body).is_some(), "{body}");
        }
        // Borrowed from the body: nothing copied for a plain publish.
        let body = br#"{"data":"hello","target":"all"}"#;
        let PublishBody::One(p) = parse_body(body).unwrap() else {
            panic!("one")
        };
        assert!(matches!(p.data, Cow::Borrowed("hello")));
        assert!(matches!(p.event, Cow::Borrowed("message")));
    }

    #[test]
    fn string_data_as_is_or_unescaped() {
        for (body, data) in [
            (
                &br#"{"data":"plain text, no escape","target":"all"}"#[..],
                "plain text, no escape",
            ),
            (br#"{"data":"","target":"all"}"#, ""),
            (
                br#"{"data":"\u00e9t\u00e9 \"q\"","target":"all"}"#,
                "\u{e9}t\u{e9} \"q\"",
            ),
            (
                "{\"data\":\"\u{e9}t\u{e9}\",\"target\":\"all\"}".as_bytes(),
                "\u{e9}t\u{e9}",
            ),
        ] {
            assert_eq!(parse(body).unwrap().data, data);
        }
        // Raw control characters and bad UTF-8 in a string are not JSON.
        for body in [
            &b"{\"data\":\"a\x01b\",\"target\":\"all\"}"[..],
            b"{\"data\":\"a\nb\",\"target\":\"all\"}",
            b"{\"data\":\"a\xffb\",\"target\":\"all\"}",
        ] {
            assert_eq!(parse(body).unwrap_err().code, "invalid_json");
        }
    }

    #[test]
    fn whitespace_and_escapes_anywhere() {
        let b = parse_body(b" \n [ { \"target\" :  \"all\" , \"data\" : \"a\\nb\" } ] \n").unwrap();
        let PublishBody::Batch(items) = b else {
            panic!("a batch")
        };
        assert_eq!(
            (items[0].target.clone(), items[0].data.as_str()),
            (Target::All, "a\nb")
        );
        let r = parse(
            br#" {"target": "\u0061ll", "event" : "n\u0061me", "data": null, "ttlSeconds" : 7 } "#,
        )
        .unwrap();
        assert_eq!(
            (r.target, r.event.as_str(), r.data.as_str(), r.ttl_seconds),
            (Target::All, "name", "null", 7)
        );
        assert_eq!(
            parse(br#"{"target":"all","target":"all"}"#)
                .unwrap_err()
                .code,
            "invalid_body"
        );
        let e = parse(br#"{"data":"d","target":"all","x":{"deep":[1]}}"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.contains("\"x\""), "{}", e.message);
    }

    #[test]
    fn defaults() {
        let r = parse(br#"{"data":"hi","target":"all"}"#).unwrap();
        assert_eq!(
            (r.event.as_str(), r.data.as_str(), r.ttl_seconds),
            ("message", "hi", DEFAULT_TTL_SECONDS)
        );
    }

    #[test]
    fn batches_keep_their_order_and_name_the_bad_element() {
        let b =
            parse_body(br#"[{"data":"a","target":"all"},{"data":"b","target":{"users":["u"]}}]"#)
                .unwrap();
        let PublishBody::Batch(items) = b else {
            panic!("a batch")
        };
        assert_eq!(
            items.iter().map(|r| r.data.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let e = parse_body(
            br#"[{"data":"a","target":"all"},{"data":"b","target":"all"},{"data":"c","target":"nope"}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_target");
        assert!(e.message.starts_with("[2] "), "{}", e.message);
        let e = parse_body(br#"[{"data":"a","target":"all"},5]"#).unwrap_err();
        assert_eq!(
            (e.code, e.message.starts_with("[1] ")),
            ("invalid_body", true)
        );
        assert_eq!(parse_body(b"[]").unwrap_err().code, "invalid_batch");
        let many = format!(
            "[{}]",
            vec![r#"{"data":"","target":"all"}"#; 1001].join(",")
        );
        assert_eq!(
            parse_body(many.as_bytes()).unwrap_err().code,
            "invalid_batch"
        );
        let max = format!(
            "[{}]",
            vec![r#"{"data":"","target":"all"}"#; 1000].join(",")
        );
        assert!(matches!(parse_body(max.as_bytes()), Ok(PublishBody::Batch(v)) if v.len() == 1000));
        assert!(matches!(
            parse_body(br#"{"data":"","target":"all"}"#),
            Ok(PublishBody::One(_))
        ));
        let e =
            parse_body(br#"[{"data":"a","target":"all"},{"target":"all","ttl":60}]"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.starts_with("[1] "), "{}", e.message);
    }

    #[test]
    fn rejections() {
        let code = |b: &str| parse(b.as_bytes()).unwrap_err().code;
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[1]"), "invalid_body");
        assert_eq!(code(r#"{"data":"x"}"#), "missing_target");
        assert_eq!(code(r#"{"target":"some"}"#), "invalid_target");
        assert_eq!(code(r#"{"target":{"users":[]}}"#), "invalid_target");
        assert_eq!(code(r#"{"target":{"users":["a b"]}}"#), "invalid_target");
        assert_eq!(
            code(r#"{"target":{"users":["a"],"topics":["b"]}}"#),
            "invalid_target"
        );
        assert_eq!(
            code(r#"{"target":"all","event":"bad name"}"#),
            "invalid_event"
        );
        assert_eq!(code(r#"{"target":"all","event":5}"#), "invalid_event");
        assert_eq!(code(r#"{"target":"all","ttlSeconds":-1}"#), "invalid_ttl");
        assert_eq!(code(r#"{"target":"all","ttlSeconds":1.5}"#), "invalid_ttl");
        // What a first day found accepted (issue 23).
        assert_eq!(code(r#"{"target":"all"}"#), "missing_data");
        for name in ["RESYNC", "CONNECTED", "HEARTBEAT", "resync"] {
            let e = parse(format!(r#"{{"data":"x","target":"all","event":"{name}"}}"#).as_bytes())
                .unwrap_err();
            assert_eq!(e.code, "reserved_event", "{name}");
            assert!(e.message.contains(name), "{}", e.message);
        }
        let e = parse(br#"{"data":"x","target":"all","ttl":60,"Event":"typo"}"#).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert!(e.message.contains("\"ttl\""), "{}", e.message);
    }
}
