//! The request head reader (httparse): any bytes are incomplete, a clean error or
//! a head; never a panic.
#![no_main]
use herald::http::head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = head::parse(data) {
        assert!(!h.path.contains('?'));
        assert!(h.last_event_id.as_deref().map_or(true, |v| !v.is_empty()));
    }
});
