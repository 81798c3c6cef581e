//! The publish body parser: any bytes are a clean 400 or a publish with a valid
//! event name and target.
#![no_main]
use herald::event::Target;
use herald::http::publish;
use libfuzzer_sys::fuzz_target;

fn valid(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    match publish::parse(data) {
        Ok(p) => {
            assert!(valid(&p.event));
            match &p.target {
                Target::All => {}
                Target::Users(v) | Target::Topics(v) => {
                    assert!(!v.is_empty());
                    assert!(v.iter().all(|n| valid(n)));
                }
            }
        }
        Err(e) => assert_eq!(e.status, 400, "{}", e.body()),
    }
});
