//! The connect and disconnect query parsers: any input is a clean 400 or a
//! request whose every name is in the allowed alphabet and length.
#![no_main]
use herald::http::params;
use libfuzzer_sys::fuzz_target;

fn valid(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    match params::connect(&query) {
        Ok(p) => {
            assert!(valid(&p.user));
            assert!(p.conn_id.as_deref().map_or(true, valid));
            assert!(p.topics.len() <= params::MAX_TOPICS);
            assert!(p.topics.iter().all(|t| valid(t)));
        }
        Err(e) => assert_eq!(e.status, 400),
    }
    match params::disconnect(&query) {
        Ok(p) => assert!(valid(&p.user) && valid(&p.conn_id)),
        Err(e) => assert_eq!(e.status, 400),
    }
});
