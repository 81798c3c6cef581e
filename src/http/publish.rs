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
pub use crate::seam::PublishRequest;

/// Default lifetime of a pending event.
pub const DEFAULT_TTL_SECONDS: u64 = 86_400;

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, msg)
}

/// Most publish objects in one batch.
pub const MAX_BATCH: usize = 1000;

/// A publish body: one event, or a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishBody {
    One(PublishRequest),
    /// In the array's order; every element validated.
    Batch(Vec<PublishRequest>),
}

/// Parse a publish body: an object, or an array of 1–1,000 objects, all
/// validated before anything is published (a bad element's error names its
/// index, `[3]`).
///
/// Every publish comes through here, so the body is read without building a
/// JSON tree: the object's fields are borrowed raw and each is parsed for what
/// it must be (only an object target, or non-string `data`, is parsed whole).
pub fn parse_body(body: &[u8]) -> Result<PublishBody, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        // The common case, one object: its fields in one pass over the body.
        return match serde_json::from_slice::<Fields>(body) {
            Ok(f) => fields(f).map(PublishBody::One),
            Err(e) => Err(not_an_object(body, e)),
        };
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(invalid_json)?;
    if !raw.get().starts_with('[') {
        return request(raw).map(PublishBody::One);
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
        PublishBody::One(r) => Ok(r),
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
        Ok(_) => bad(
            "invalid_body",
            format!("body is not a valid publish object: {e}"),
        ),
    }
}

fn invalid_json(e: serde_json::Error) -> ApiError {
    bad("invalid_json", format!("body is not valid JSON: {e}"))
}

/// A publish object's fields, unparsed (unknown fields are ignored); a field
/// given as `null` is `Some("null")`, not absent.
#[derive(Deserialize)]
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

/// A field that is absent or `null`.
fn given(v: Option<&RawValue>) -> Option<&str> {
    v.map(RawValue::get).filter(|s| *s != "null")
}

/// One publish object (valid JSON already).
fn request(raw: &RawValue) -> Result<PublishRequest, ApiError> {
    if !raw.get().starts_with('{') {
        return Err(bad(
            "invalid_body",
            "body must be a JSON object, or an array of them",
        ));
    }
    let f: Fields = serde_json::from_str(raw.get()).map_err(|e| {
        bad(
            "invalid_body",
            format!("body is not a valid publish object: {e}"),
        )
    })?;
    fields(f)
}

/// Validate one publish object's fields.
fn fields(f: Fields) -> Result<PublishRequest, ApiError> {
    let event = match given(f.event) {
        None => "message".to_string(),
        Some(e) => match serde_json::from_str::<Cow<str>>(e) {
            Ok(s) if valid_name(&s) => s.into_owned(),
            _ => {
                return Err(bad(
                    "invalid_event",
                    "event must be 1-128 bytes of letters, digits and . _ : @ -",
                ))
            }
        },
    };
    let data = match f.data.map(RawValue::get) {
        None => String::new(),
        Some(d) if d.starts_with('"') => serde_json::from_str::<String>(d).map_err(invalid_json)?,
        // Any other JSON value is sent compact, on one line.
        Some(d) => serde_json::from_str::<Value>(d)
            .map_err(invalid_json)?
            .to_string(),
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
    Ok(PublishRequest {
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
        assert_eq!(
            parse(br#"{"target":"all","x":{"deep":[1]}}"#)
                .unwrap()
                .target,
            Target::All
        );
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
        let e =
            parse_body(br#"[{"target":"all"},{"target":"all"},{"target":"nope"}]"#).unwrap_err();
        assert_eq!(e.code, "invalid_target");
        assert!(e.message.starts_with("[2] "), "{}", e.message);
        let e = parse_body(br#"[{"target":"all"},5]"#).unwrap_err();
        assert_eq!(
            (e.code, e.message.starts_with("[1] ")),
            ("invalid_body", true)
        );
        assert_eq!(parse_body(b"[]").unwrap_err().code, "invalid_batch");
        let many = format!("[{}]", vec![r#"{"target":"all"}"#; 1001].join(","));
        assert_eq!(
            parse_body(many.as_bytes()).unwrap_err().code,
            "invalid_batch"
        );
        let max = format!("[{}]", vec![r#"{"target":"all"}"#; 1000].join(","));
        assert!(matches!(parse_body(max.as_bytes()), Ok(PublishBody::Batch(v)) if v.len() == 1000));
        assert!(matches!(
            parse_body(br#"{"target":"all"}"#),
            Ok(PublishBody::One(_))
        ));
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
    }
}
