//! Property: any event data framed by herald and read back by a WHATWG-conformant
//! SSE parser (tests/support/sse.rs) is the same data, with every line break (CR,
//! LF, CRLF) read as LF — the only change the SSE format itself makes. Covers empty
//! data, empty lines, trailing breaks, a leading space, `data:`-like text and
//! unicode; also the `id:` and `event:` fields and frame boundaries.

mod support;

use herald::sse::frame;
use proptest::prelude::*;
use support::sse::Parser;

/// What SSE can carry: the data with CRLF and lone CR turned into LF.
fn normalize(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Pieces that stress the framer: line breaks of every kind, spaces and colons
/// where a field name or its separator would be, BOM-like and multi-byte text.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\n".to_string()),
        Just("\r".to_string()),
        Just("\r\n".to_string()),
        Just("\n\n".to_string()),
        Just(" ".to_string()),
        Just(":".to_string()),
        Just("data: ".to_string()),
        Just("id: 7".to_string()),
        Just("event: x".to_string()),
        Just("retry: 1".to_string()),
        Just("\u{feff}".to_string()),
        Just("é漢🙂".to_string()),
        "[a-z0-9 ]{0,8}",
        any::<String>(),
    ]
}

fn data() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..12).prop_map(|v| v.concat())
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:@-]{1,32}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn framed_data_parses_back_identical(id in any::<u64>(), name in name(), data in data()) {
        let bytes = frame::event(id, &name, &data);
        let mut p = Parser::default();
        let events = p.feed(&bytes);
        prop_assert_eq!(events.len(), 1, "one frame is one event: {:?}", bytes);
        let ev = &events[0];
        let want = normalize(&data);
        prop_assert_eq!(ev.data.as_str(), want.as_str());
        prop_assert_eq!(ev.event.as_str(), name.as_str());
        let want_id = id.to_string();
        prop_assert_eq!(ev.id.as_deref(), Some(want_id.as_str()));
    }

    #[test]
    fn frames_stay_separate_when_concatenated(a in data(), b in data()) {
        let mut bytes = frame::event(1, "a", &a).to_vec();
        bytes.extend_from_slice(&frame::unnumbered("HEARTBEAT", "123"));
        bytes.extend_from_slice(&frame::event(2, "b", &b));
        // Fed in two arbitrary halves, as a socket may deliver them.
        let cut = bytes.len() / 2;
        let mut p = Parser::default();
        let mut events = p.feed(&bytes[..cut]);
        events.extend(p.feed(&bytes[cut..]));
        prop_assert_eq!(events.len(), 3);
        let (want_a, want_b) = (normalize(&a), normalize(&b));
        prop_assert_eq!(events[0].data.as_str(), want_a.as_str());
        prop_assert_eq!(events[1].event.as_str(), "HEARTBEAT");
        prop_assert_eq!(events[1].id.as_deref(), None);
        prop_assert_eq!(events[2].data.as_str(), want_b.as_str());
        prop_assert_eq!(p.last_event_id.as_str(), "2");
    }
}

#[test]
fn the_edge_cases_by_name() {
    for data in [
        "",
        "\n",
        "\r",
        "\r\n",
        "a\n",
        "\na",
        " leading",
        "  two",
        "a\r\nb\rc\nd",
        "\n\n\n",
        "data: x",
        ":comment-like",
    ] {
        let mut p = Parser::default();
        let ev = p.feed(&frame::event(9, "m", data));
        assert_eq!(ev.len(), 1, "{data:?}");
        assert_eq!(ev[0].data, normalize(data), "{data:?}");
    }
}
