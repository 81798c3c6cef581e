//! Query parameters of the connect and disconnect endpoints, validated: user,
//! connection and topic names are 1–128 bytes of `[A-Za-z0-9._:@-]`, at most 64
//! topics. Pure; every failure is a 400 with a JSON error naming the parameter.

use crate::error::ApiError;

/// Longest user, connection, topic or event name.
pub const MAX_NAME: usize = 128;
/// Most topics one connection may subscribe to.
pub const MAX_TOPICS: usize = 64;

/// Whether `s` is a valid user, connection, topic or event name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

/// A validated connect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    pub user: String,
    /// `None`: herald generates one.
    pub conn_id: Option<String>,
    pub topics: Vec<Box<str>>,
    /// The `lastEventId` query parameter (the header, when present, wins).
    pub last_event_id: Option<String>,
    /// The `token` query parameter (subscriber JWT; EventSource cannot set headers).
    pub token: Option<String>,
}

/// A validated disconnect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectParams {
    pub user: String,
    /// `None`: every stream of the user (only with `reconnect=false`).
    pub conn_id: Option<String>,
    /// `reconnect=false`: the user's connects are answered `204` for this long
    /// (`for=`, default 5 minutes), on every pod.
    pub block_for: Option<std::time::Duration>,
}

/// How long `reconnect=false` refuses a user by default, and at most.
pub const BLOCK_DEFAULT: std::time::Duration = std::time::Duration::from_secs(300);
pub const BLOCK_MAX: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

struct Query {
    user: Option<String>,
    conn_id: Option<String>,
    topics: Option<String>,
    last_event_id: Option<String>,
    token: Option<String>,
    reconnect: Option<String>,
    block_for: Option<String>,
}

fn parse_query(query: &str) -> Query {
    let mut q = Query {
        user: None,
        conn_id: None,
        topics: None,
        last_event_id: None,
        token: None,
        reconnect: None,
        block_for: None,
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "userId" => &mut q.user,
            "connectionId" => &mut q.conn_id,
            "topics" => &mut q.topics,
            "lastEventId" => &mut q.last_event_id,
            "token" => &mut q.token,
            "reconnect" => &mut q.reconnect,
            "for" => &mut q.block_for,
            _ => continue,
        };
        // The first occurrence wins.
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    q
}

fn user(value: Option<String>) -> Result<String, ApiError> {
    match value {
        None => Err(ApiError::bad_request(
            "missing_user_id",
            "query parameter userId is required",
        )),
        Some(u) if valid_name(&u) => Ok(u),
        Some(_) => Err(ApiError::bad_request(
            "invalid_user_id",
            "userId must be 1-128 bytes of letters, digits and . _ : @ -",
        )),
    }
}

fn conn_id(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(c) if !valid_name(&c) => Err(ApiError::bad_request(
            "invalid_connection_id",
            "connectionId must be 1-128 bytes of letters, digits and . _ : @ -",
        )),
        other => Ok(other),
    }
}

/// Parse and validate the connect query string.
pub fn connect(query: &str) -> Result<ConnectParams, ApiError> {
    let q = parse_query(query);
    let user = user(q.user)?;
    let conn_id = conn_id(q.conn_id)?;
    let mut topics: Vec<Box<str>> = Vec::new();
    for t in q
        .topics
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        if !valid_name(t) {
            return Err(ApiError::bad_request(
                "invalid_topic",
                "each topic must be 1-128 bytes of letters, digits and . _ : @ -",
            ));
        }
        if !topics.iter().any(|have| &**have == t) {
            topics.push(t.into());
        }
        if topics.len() > MAX_TOPICS {
            return Err(ApiError::bad_request(
                "too_many_topics",
                format!("at most {MAX_TOPICS} topics"),
            ));
        }
    }
    let last_event_id = q.last_event_id.filter(|s| !s.is_empty());
    Ok(ConnectParams {
        user,
        conn_id,
        topics,
        last_event_id,
        token: q.token.filter(|s| !s.is_empty()),
    })
}

/// The `userId` of a query that names only a user.
pub fn user_only(query: &str) -> Result<String, ApiError> {
    user(parse_query(query).user)
}

/// Parse and validate the disconnect query string.
pub fn disconnect(query: &str) -> Result<DisconnectParams, ApiError> {
    let q = parse_query(query);
    let user = user(q.user)?;
    let conn_id = conn_id(q.conn_id)?;
    let reconnect = match q.reconnect.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_reconnect",
                "reconnect must be true or false",
            ))
        }
    };
    let block_for = match (reconnect, q.block_for.as_deref()) {
        (true, None) => None,
        (true, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_for",
                "for= goes with reconnect=false",
            ))
        }
        (false, None) => Some(BLOCK_DEFAULT),
        (false, Some(d)) => Some(
            crate::config::duration(d)
                .ok()
                .filter(|d| !d.is_zero() && *d <= BLOCK_MAX)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_for",
                        "for must be a duration from 1s to 7d (e.g. 5m, 1h)",
                    )
                })?,
        ),
    };
    if conn_id.is_none() && reconnect {
        return Err(ApiError::bad_request(
            "missing_connection_id",
            "query parameter connectionId is required (or reconnect=false, to end every \
             stream of the user and refuse its connects)",
        ));
    }
    Ok(DisconnectParams {
        user,
        conn_id,
        block_for,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("user-1@example.com:a_b.c"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("ü"));
        assert!(valid_name(&"a".repeat(128)));
        assert!(!valid_name(&"a".repeat(129)));
    }

    #[test]
    fn connect_query() {
        let p = connect("userId=u1&topics=a,b,,a&lastEventId=42&x=y").unwrap();
        assert_eq!(p.user, "u1");
        assert_eq!(p.conn_id, None);
        assert_eq!(p.topics, vec![Box::from("a"), Box::from("b")]);
        assert_eq!(p.last_event_id.as_deref(), Some("42"));
        assert_eq!(connect("userId=u%40x").unwrap().user, "u@x");
        assert_eq!(connect("").unwrap_err().code, "missing_user_id");
        assert_eq!(connect("userId=a%20b").unwrap_err().code, "invalid_user_id");
        assert_eq!(
            connect("userId=a&connectionId=").unwrap_err().code,
            "invalid_connection_id"
        );
        assert_eq!(
            connect("userId=a&topics=ok,b%2Fad").unwrap_err().code,
            "invalid_topic"
        );
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        assert_eq!(
            connect(&format!("userId=a&topics={}", many.join(",")))
                .unwrap_err()
                .code,
            "too_many_topics"
        );
    }

    #[test]
    fn disconnect_query() {
        assert_eq!(
            disconnect("userId=u&connectionId=c").unwrap(),
            DisconnectParams {
                user: "u".into(),
                conn_id: Some("c".into()),
                block_for: None,
            }
        );
        assert_eq!(
            disconnect("userId=u").unwrap_err().code,
            "missing_connection_id"
        );
        // reconnect=false: every stream of the user, refused for `for`.
        let p = disconnect("userId=u&reconnect=false").unwrap();
        assert_eq!((p.conn_id, p.block_for), (None, Some(BLOCK_DEFAULT)));
        let p = disconnect("userId=u&connectionId=c&reconnect=false&for=1h").unwrap();
        assert_eq!(p.block_for, Some(std::time::Duration::from_secs(3600)));
        for bad in [
            "userId=u&reconnect=no",
            "userId=u&reconnect=false&for=0s",
            "userId=u&reconnect=false&for=30d",
            "userId=u&reconnect=false&for=soon",
            "userId=u&connectionId=c&for=1h",
        ] {
            assert!(disconnect(bad).is_err(), "{bad}");
        }
    }
}
