//! What a new adopter's first day found (issue 23), from outside: a second
//! herald on a port one already listens on exits with "address in use"; a host
//! name in `--listen` resolves; a malformed `--log` filter is refused at start;
//! publish objects with an unknown field, no `data` or a reserved event name are
//! refused with a 400 that names the field (and the index in a batch).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::check::assert_json_error;
use support::{Herald, WAIT};

/// Run herald with `args` and wait for it to exit (it must, within [`WAIT`]);
/// returns (success, stderr).
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let until = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald {args:?} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (status.success(), err)
}

#[tokio::test]
async fn a_second_herald_on_the_same_port_exits_with_address_in_use() {
    let first = Herald::start(&[]);
    let addr = first.addr.to_string();
    let (ok, err) = run_to_exit(&["--listen", &addr]);
    assert!(!ok, "the second herald must fail");
    assert!(err.contains("address in use"), "{err}");
    // The first still has every connection.
    for _ in 0..6 {
        let s = first.stats().await;
        assert_eq!(s["podId"], first.pod_id.as_str(), "{s}");
    }
}

#[test]
fn a_host_name_in_listen_resolves() {
    let child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "localhost:0", "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn herald");
    let h = Herald::from_started_child(child);
    assert!(h.addr.ip().is_loopback(), "{}", h.addr);
}

#[test]
fn a_malformed_log_filter_is_refused_at_start() {
    let (ok, err) = run_to_exit(&["--listen", "127.0.0.1:0", "--log", "herald=debg"]);
    assert!(!ok);
    assert!(err.contains("not a log filter"), "{err}");
}

#[tokio::test]
async fn publish_objects_that_would_mislead_are_refused_naming_the_field() {
    let h = Herald::start(&[]);
    for (body, code, names) in [
        (
            r#"{"event":"RESYNC","data":"x","target":"all"}"#,
            "reserved_event",
            "RESYNC",
        ),
        (
            r#"{"event":"HEARTBEAT","data":"x","target":"all"}"#,
            "reserved_event",
            "HEARTBEAT",
        ),
        (
            r#"{"data":"x","target":"all","ttl":60,"Event":"typo"}"#,
            "unknown_field",
            "\"ttl\"",
        ),
        (r#"{"target":"all"}"#, "missing_data", "data"),
        (
            r#"[{"data":"a","target":"all"},{"data":"b","target":"all","Event":"x"}]"#,
            "unknown_field",
            "[1] ",
        ),
    ] {
        let r = h.post("/api/broadcast", body).await;
        assert_json_error(&r, 400, body);
        let v = r.json();
        assert_eq!(v["error"], code, "{body}: {}", r.body);
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(names)),
            "{body}: {}",
            r.body
        );
    }
    // Nothing of it was published; a valid body still is.
    let mut sub = h.subscribe_connected("userId=fd").await;
    h.publish(serde_json::json!({"data": "ok", "target": "all"}))
        .await;
    let ev = sub.next_non_heartbeat(WAIT).await.expect("the valid one");
    assert_eq!(ev.data, "ok");
}

#[tokio::test]
async fn a_token_for_another_audience_or_issuer_opens_nothing() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    const SECRET: &str = "first-day-secret-0123456789abcdef";
    let h = Herald::start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "herald",
        "--jwt-issuer",
        "https://idp.example/",
    ]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = |aud: &str, iss: &str| {
        encode(
            &Header::default(),
            &serde_json::json!({"sub": "kim", "exp": exp, "aud": aud, "iss": iss}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (aud, iss, want) in [
        ("my-api", "https://idp.example/", 401),
        ("herald", "https://elsewhere/", 401),
        ("herald", "https://idp.example/", 200),
    ] {
        let path = format!("/api/user/sse/connect?userId=kim&token={}", token(aud, iss));
        let c = support::SseClient::connect(h.addr, &path, &[]).await;
        assert_eq!(c.status, want, "aud {aud}, iss {iss}: {}", c.body);
    }
}
