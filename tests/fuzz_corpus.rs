//! Replays the kept fuzz corpus (fuzz/corpus/, grown by `cargo +nightly fuzz run`)
//! through the same parsers on the stable toolchain, so every input the fuzzer
//! once found interesting stays a regression test: a clean 400 or a valid result,
//! never a panic. (The framer's corpus is encoded for `arbitrary`; the framer's
//! property is checked in tests/frame_roundtrip.rs.) The HTTP/2 corpus
//! (`h2_frames`) runs through the same checked connection as its fuzz target,
//! and its seeds, the frame sequences of the protocol core's unit tests, are
//! kept in step with [`h2_seeds`] (`HERALD_WRITE_SEEDS=1` writes them).

use std::path::{Path, PathBuf};

use herald::config::Config;
use herald::http::{head, params, publish};
use herald::http2::frame::*;
use herald::http2::limits::Limits;
use herald::http2::testing::checked::run_frames;
use herald::http2::testing::{frame, request_block};
use herald::tls::testing::run_records;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("dir entry").path()).expect("read corpus file"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "empty corpus {}", dir.display());
    out
}

#[test]
fn query_corpus() {
    for data in inputs("query") {
        let q = String::from_utf8_lossy(&data);
        if let Err(e) = params::connect(&q) {
            assert_eq!(e.status, 400);
        }
        if let Err(e) = params::disconnect(&q) {
            assert_eq!(e.status, 400);
        }
    }
}

#[test]
fn publish_body_corpus() {
    for data in inputs("publish_body") {
        if let Err(e) = publish::parse(&data) {
            assert_eq!(e.status, 400, "{}", e.body());
        }
    }
}

#[test]
fn request_head_corpus() {
    for data in inputs("request_head") {
        let _ = head::parse(&data);
    }
}

#[test]
fn h2_frames_corpus() {
    let limits = Limits::from_config(&Config::defaults());
    let (mut served, mut events, mut failed) = (0, 0, 0);
    for data in inputs("h2_frames") {
        let c = run_frames(limits, &data);
        served += c.host.dispatched.len();
        events += c.host.ended.len();
        failed += usize::from(c.proto.failed().is_some());
    }
    // The seeds reach requests, SSE streams and connection errors.
    assert!(
        served > 200 && events > 200 && failed > 5,
        "{served} {events} {failed}"
    );
}

#[test]
fn h2_frames_seeds_are_in_the_corpus() {
    seeds_in_corpus("h2_frames", h2_seeds());
}

/// Each seed is a file of the target's corpus, as it is made here
/// (`HERALD_WRITE_SEEDS=1` writes them).
fn seeds_in_corpus<N: std::fmt::Display>(target: &str, seeds: Vec<(N, Vec<u8>)>) {
    let dir = corpus(target);
    let write = std::env::var_os("HERALD_WRITE_SEEDS").is_some();
    for (name, data) in seeds {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(&dir).expect("corpus dir");
            std::fs::write(&path, &data).expect("write seed");
        }
        let kept = std::fs::read(&path).unwrap_or_default();
        assert!(
            kept == data,
            "{} differs (HERALD_WRITE_SEEDS=1)",
            path.display()
        );
    }
}

/// What a client sends after its preface, as the protocol core's unit tests
/// (src/http2/tests.rs) and a few more: the fuzzer's seeds.
fn h2_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let settings = || frame(SETTINGS, 0, 0, &[]);
    let ack = || frame(SETTINGS, ACK, 0, &[]);
    let get = |id, path| {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("GET", path, &[]),
        )
    };
    let post = |id, path, extra: &[(&str, &str)]| {
        frame(
            HEADERS,
            END_HEADERS,
            id,
            &request_block("POST", path, extra),
        )
    };
    let data = |id, flags, len| frame(DATA, flags, id, &vec![b'x'; len]);
    let rst = |id, code: u32| frame(RST_STREAM, 0, id, &code.to_be_bytes());
    let window = |id, inc: u32| frame(WINDOW_UPDATE, 0, id, &inc.to_be_bytes());
    let setting = |id: u16, v: u32| {
        let mut p = id.to_be_bytes().to_vec();
        p.extend(v.to_be_bytes());
        frame(SETTINGS, 0, 0, &p)
    };
    let open = |rest: Vec<Vec<u8>>| {
        let mut out = settings();
        out.extend(ack());
        out.extend(rest.concat());
        out
    };
    let long = format!("/{}", "a".repeat(17_000));
    let long_block = request_block("GET", &long, &[]);
    let mut seeds = vec![
        ("settings", settings()),
        ("settings-ack", open(vec![])),
        ("get", open(vec![get(1, "/x")])),
        (
            "head",
            open(vec![frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &request_block("HEAD", "/x", &[]),
            )]),
        ),
        (
            "table-size",
            open(vec![
                get(1, "/x"),
                setting(SETTINGS_HEADER_TABLE_SIZE, 0),
                get(3, "/x"),
            ]),
        ),
        (
            "publish",
            open(vec![
                post(1, "/publish", &[]),
                data(1, 0, 1000),
                data(1, END_STREAM, 24),
            ]),
        ),
        (
            "connection-window",
            open(vec![
                post(1, "/publish", &[]),
                post(3, "/publish", &[]),
                data(1, 0, 16_384),
                data(1, 0, 16_384),
                data(1, 0, 16_384),
                data(1, 0, 16_384),
                data(3, 0, 16_384),
            ]),
        ),
        (
            "refused-body",
            open(vec![
                post(1, "/refuse", &[]),
                data(1, 0, 16_000),
                data(1, 0, 16_000),
                data(1, END_STREAM, 0),
            ]),
        ),
        (
            "content-length-short",
            open(vec![
                post(1, "/publish", &[("content-length", "10")]),
                frame(DATA, END_STREAM, 1, b"four"),
                frame(DATA, 0, 1, b"late"),
            ]),
        ),
        (
            "body-timeout",
            open(vec![post(1, "/publish", &[]), data(1, 0, 100)]),
        ),
        (
            "block-left-open",
            open(vec![frame(
                HEADERS,
                0,
                1,
                &request_block("GET", "/x", &[])[..4],
            )]),
        ),
        (
            "sse-window",
            open(vec![
                setting(SETTINGS_INITIAL_WINDOW_SIZE, 10),
                get(1, "/events"),
                window(1, 100),
                rst(1, CANCEL),
            ]),
        ),
        (
            "closed-streams",
            open(vec![
                get(1, "/x"),
                data(1, 0, 1),
                window(1, 1),
                frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
                get(1, "/x"),
            ]),
        ),
        (
            "later-reset",
            open(vec![get(1, "/later"), get(3, "/later"), rst(3, CANCEL)]),
        ),
        ("trailers", {
            let trailers = [
                0, 10, b'x', b'-', b'c', b'h', b'e', b'c', b'k', b's', b'u', b'm', 1, b'1',
            ];
            open(vec![
                post(1, "/publish", &[]),
                data(1, 0, 10),
                frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers),
            ])
        }),
        ("continuation", {
            let block = request_block("GET", "/events", &[("x-a", "b")]);
            open(vec![
                frame(HEADERS, END_STREAM, 1, &block[..10]),
                frame(CONTINUATION, 0, 1, &block[10..20]),
                frame(CONTINUATION, END_HEADERS, 1, &block[20..]),
            ])
        }),
        ("padded-priority", {
            let mut p = vec![3, 0, 0, 0, 0, 16];
            p.extend(request_block("GET", "/x", &[]));
            p.extend([0; 3]);
            open(vec![frame(
                HEADERS,
                END_HEADERS | END_STREAM | PADDED | PRIORITY_FLAG,
                1,
                &p,
            )])
        }),
        (
            "padded-data",
            open(vec![
                post(1, "/publish", &[]),
                frame(DATA, PADDED | END_STREAM, 1, &[4, b'a', b'b', 0, 0, 0, 0]),
            ]),
        ),
        (
            "self-dependent",
            open(vec![get(1, "/x"), frame(PRIORITY, 0, 3, &[0, 0, 0, 3, 16])]),
        ),
        (
            "pings",
            open(vec![
                frame(PING, 0, 0, b"pingpong"),
                frame(PING, ACK, 0, b"pingpong"),
            ]),
        ),
        (
            "client-goaway",
            open(vec![
                get(1, "/events"),
                frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
            ]),
        ),
        (
            "push-promise",
            open(vec![frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])]),
        ),
        (
            "unknown-type",
            open(vec![frame(0x20, 0xff, 1, b"what"), get(1, "/x")]),
        ),
        (
            "large-frames",
            open(vec![
                setting(SETTINGS_MAX_FRAME_SIZE, 20_000),
                setting(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20),
                get(1, "/events"),
                window(0, 1 << 20),
            ]),
        ),
        (
            "rapid-reset",
            open(
                (0..500)
                    .flat_map(|k| [get(2 * k + 1, "/events"), rst(2 * k + 1, CANCEL)])
                    .collect(),
            ),
        ),
        (
            "stream-limit",
            open((0..130).map(|k| get(2 * k + 1, "/events")).collect()),
        ),
        (
            "answer-budget",
            open(
                (0..64)
                    .map(|k| get(2 * k + 1, "/later"))
                    .chain([get(129, "/x"), rst(1, CANCEL), window(0, 0)])
                    .collect(),
            ),
        ),
        (
            "bad-hpack",
            open(vec![frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xbe])]),
        ),
        (
            "headers-too-large",
            open(vec![
                frame(HEADERS, END_STREAM, 1, &long_block[..16_000]),
                frame(CONTINUATION, END_HEADERS, 1, &long_block[16_000..]),
            ]),
        ),
        (
            "window-zero",
            open(vec![get(1, "/later"), window(1, 0), window(0, 0x7fff_ffff)]),
        ),
        (
            "settings-flood",
            (0..120).map(|_| settings()).collect::<Vec<_>>().concat(),
        ),
        ("even-stream", open(vec![get(2, "/x")])),
        ("data-on-idle", open(vec![data(5, END_STREAM, 3)])),
        (
            "content-length-too-large",
            open(vec![
                post(1, "/publish", &[("content-length", "100000")]),
                data(1, 0, 16_384),
            ]),
        ),
    ];
    seeds.sort_by_key(|(name, _)| *name);
    seeds
}

#[test]
fn tls_records_corpus() {
    let inputs = inputs("tls_records");
    for data in &inputs {
        run_records(data);
    }
    assert!(inputs.len() >= 10);
}

#[test]
fn tls_records_seeds_are_in_the_corpus() {
    seeds_in_corpus("tls_records", tls_seeds());
}

/// Seeds of the record fuzzer: each kind of record layer with data, padding,
/// empty records, key updates and an alert, read whole and changed.
fn tls_seeds() -> Vec<(String, Vec<u8>)> {
    // One record: kind, two bytes of length, its bytes (see ops_from_bytes).
    let rec = |kind: u8, data: &[u8]| {
        let mut r = vec![kind, data.len() as u8, (data.len() >> 8) as u8];
        r.extend_from_slice(data);
        r
    };
    let records = [
        rec(0, b"GET / HTTP/1.1\r\n\r\n"),
        rec(4, b""),
        rec(5, b""),
        rec(1, &[7; 300]),
        rec(4, b""),
        rec(6, &[]),
    ]
    .concat();
    let mut seeds = Vec::new();
    for which in 0..5u8 {
        for how in 0..4u8 {
            let mut d = vec![which, how, 40, 0, 3];
            d.extend_from_slice(&records);
            seeds.push((format!("{which}-{how}"), d));
        }
    }
    let mut idle = vec![0, 0, 0, 0, 1];
    for _ in 0..34 {
        idle.extend(rec(4, b""));
    }
    seeds.push(("idle-run".into(), idle));
    seeds
}
