//! The HTTP/2 protocol core: any bytes after the client's preface, fed in
//! chunks with write turns, SSE events, later answers and a moving clock
//! between them, keep every invariant `CheckedConn` asserts (budgets, windows
//! both ways, what herald writes, the connection's end: see
//! `herald::http2::testing::checked`; tests/h2_properties.rs checks the same
//! with generated frames). tests/fuzz_corpus.rs replays the corpus on stable.
#![no_main]
use std::sync::OnceLock;

use herald::config::Config;
use herald::http2::limits::Limits;
use herald::http2::testing::checked::run_frames;
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    *LIMITS.get_or_init(|| Limits::from_config(&Config::defaults()))
}

fuzz_target!(|data: &[u8]| {
    run_frames(limits(), data);
});
