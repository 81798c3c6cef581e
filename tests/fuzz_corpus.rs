//! Replays the kept fuzz corpus (fuzz/corpus/, grown by `cargo +nightly fuzz run`)
//! through the same parsers on the stable toolchain, so every input the fuzzer
//! once found interesting stays a regression test: a clean 400 or a valid result,
//! never a panic. (The framer's corpus is encoded for `arbitrary`; the framer's
//! property is checked in tests/frame_roundtrip.rs.)

use std::path::Path;

use herald::http::{head, params, publish};

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
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
