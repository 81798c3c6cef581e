//! herald's TLS record reader: records a client may send (data, padding,
//! empty records, key updates, alerts, other handshake messages; decoded
//! from the input), sealed with fixed keys for each kind of record layer and
//! read in pieces as an HTTP/2 connection and a lean stream read them, give
//! what a model of RFC 8446 §5 says; changed anywhere, a prefix of that and a
//! refusal at most, never other plaintext (see `herald::tls::testing`;
//! tests/tls_records.rs checks the same with generated records).
//! tests/fuzz_corpus.rs replays the corpus on stable.
#![no_main]
use herald::tls::testing::run_records;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    run_records(data);
});
