//! The protocol core driven in memory with [`MemoryHost`]: the budgets and
//! deadlines herald promises, checked frame by frame with a clock of the
//! test's own.

use super::frame::*;
use super::host::Answer;
use super::limits::Limits;
use super::proto::Proto;
use super::testing::{client_preface, frame, frames, request_block, MemoryHost};
use crate::config::Config;
use crate::conn::CloseReason;

const SEC: u64 = 1_000_000_000;

fn limits() -> Limits {
    Limits::from_config(&Config::defaults())
}

/// A connection past its preface and SETTINGS exchange, its output drained.
fn open(host: &mut MemoryHost) -> Proto {
    let mut p = Proto::new(limits(), SEC);
    let mut input = client_preface();
    input.extend(frame(SETTINGS, ACK, 0, &[]));
    let n = p.receive(host, &input, SEC);
    assert_eq!(n, input.len());
    assert_eq!(p.failed(), None);
    p.out.clear();
    p
}

/// Everything herald has to send now: control frames, then DATA.
fn drain(p: &mut Proto, host: &mut MemoryHost, now: u64) -> Vec<(Head, Vec<u8>)> {
    let mut out = std::mem::take(&mut p.out);
    loop {
        let produced = p.produce(host, &mut out, now);
        out.append(&mut p.out);
        if !produced.more {
            break;
        }
    }
    frames(&out)
}

fn kinds(f: &[(Head, Vec<u8>)]) -> Vec<(u8, u32)> {
    f.iter().map(|(h, _)| (h.kind, h.stream)).collect()
}

fn code(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[payload.len() - 4..].try_into().unwrap())
}

fn status(block: &[u8]) -> u16 {
    // herald's blocks: an optional size update (0x20), then `:status`
    // indexed or as a literal with an indexed name.
    let b = if block[0] == 0x20 { &block[1..] } else { block };
    match b[0] {
        0x88 => 200,
        0x8d => 404,
        0x08 => std::str::from_utf8(&b[2..5]).unwrap().parse().unwrap(),
        other => panic!("unexpected status byte {other:#x}"),
    }
}

#[test]
fn herald_opens_with_its_settings_and_a_connection_window() {
    let p = Proto::new(limits(), SEC);
    let f = frames(&p.out);
    assert_eq!(kinds(&f), [(SETTINGS, 0), (WINDOW_UPDATE, 0)]);
    let settings: Vec<(u16, u32)> = f[0]
        .1
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert_eq!(
        settings,
        [
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_MAX_CONCURRENT_STREAMS, 128),
            (SETTINGS_INITIAL_WINDOW_SIZE, 65_537),
            (SETTINGS_MAX_HEADER_LIST_SIZE, 16_384),
        ]
    );
    assert_eq!(code(&f[1].1), 2, "connection window raised to 65,537");
}

#[test]
fn the_first_answer_starts_with_a_table_size_update_and_head_has_no_body() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let get = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("GET", "/x", &[]),
    );
    p.receive(&mut host, &get, SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(HEADERS, 1), (DATA, 1)]);
    assert_eq!(f[0].1[0], 0x20, "a Dynamic Table Size Update to 0 first");
    assert_eq!(status(&f[0].1), 200);
    let head = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &request_block("HEAD", "/x", &[]),
    );
    p.receive(&mut host, &head, SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(HEADERS, 3)], "no DATA for HEAD");
    assert_ne!(f[0].1[0], 0x20, "said once");
    assert_eq!(f[0].0.flags & END_STREAM, END_STREAM);
    // A new SETTINGS_HEADER_TABLE_SIZE: the next block says 0 again.
    let table = [0, 1, 0, 0, 0, 0];
    p.receive(&mut host, &frame(SETTINGS, 0, 0, &table), SEC);
    let get = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        5,
        &request_block("GET", "/x", &[]),
    );
    p.receive(&mut host, &get, SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(SETTINGS, 0), (HEADERS, 5), (DATA, 5)]);
    assert_eq!(f[1].1[0], 0x20);
}

#[test]
fn a_body_is_held_until_answered_and_its_window_given_back() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let headers = frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/publish", &[]),
    );
    p.receive(&mut host, &headers, SEC);
    p.receive(&mut host, &frame(DATA, 0, 1, &[b'x'; 1000]), SEC);
    assert_eq!(host.bodies, 1000, "held while it comes");
    assert!(
        drain(&mut p, &mut host, SEC).is_empty(),
        "nothing given back yet"
    );
    p.receive(&mut host, &frame(DATA, END_STREAM, 1, &[b'y'; 24]), SEC);
    assert_eq!(host.dispatched, [(1, "/publish".to_string(), 1024)]);
    assert_eq!(host.bodies, 0, "answered: let go");
    let f = drain(&mut p, &mut host, SEC);
    // The answer's head and the window come first, then the DATA.
    assert_eq!(kinds(&f), [(HEADERS, 1), (WINDOW_UPDATE, 0), (DATA, 1)]);
    assert_eq!(status(&f[0].1), 202);
    assert_eq!(code(&f[1].1), 1024);
}

#[test]
fn more_than_the_connection_window_is_a_flow_control_error() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    for id in [1u32, 3] {
        let h = frame(
            HEADERS,
            END_HEADERS,
            id,
            &request_block("POST", "/publish", &[]),
        );
        p.receive(&mut host, &h, SEC);
    }
    // 65,537 bytes may be held on the connection; the stream window is as
    // large, so the connection's runs out first.
    for _ in 0..4 {
        p.receive(&mut host, &frame(DATA, 0, 1, &[0; 16_384]), SEC);
    }
    assert_eq!(p.failed(), None);
    p.receive(&mut host, &frame(DATA, 0, 3, &[0; 16_384]), SEC);
    assert_eq!(p.failed(), Some(FLOW_CONTROL_ERROR));
    let f = drain(&mut p, &mut host, SEC);
    let goaway = f.iter().find(|(h, _)| h.kind == GOAWAY).expect("GOAWAY");
    assert_eq!(code(&goaway.1), FLOW_CONTROL_ERROR);
}

#[test]
fn a_refused_request_is_answered_at_once_and_keeps_none_of_its_body() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let h = frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/refuse", &[]),
    );
    p.receive(&mut host, &h, SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(HEADERS, 1), (DATA, 1), (RST_STREAM, 1)]);
    assert_eq!(status(&f[0].1), 401);
    assert_eq!(code(&f[2].1), NO_ERROR, "told to stop sending");
    for _ in 0..3 {
        p.receive(&mut host, &frame(DATA, 0, 1, &[0; 16_000]), SEC);
        assert_eq!(host.bodies, 0);
    }
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(
        kinds(&f),
        [(WINDOW_UPDATE, 0); 3],
        "dropped bytes given back"
    );
    assert!(host.dispatched.is_empty());
}

#[test]
fn a_body_short_of_its_content_length_resets_its_stream_only() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let block = request_block("POST", "/publish", &[("content-length", "10")]);
    p.receive(&mut host, &frame(HEADERS, END_HEADERS, 1, &block), SEC);
    p.receive(&mut host, &frame(DATA, END_STREAM, 1, b"four"), SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f)[0], (RST_STREAM, 1));
    assert_eq!(code(&f[0].1), PROTOCOL_ERROR);
    assert_eq!(p.failed(), None);
    assert_eq!(host.bodies, 0);
    // The stream is closed by herald: what the client still sends is ignored.
    p.receive(&mut host, &frame(DATA, 0, 1, b"late"), SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(WINDOW_UPDATE, 0)]);
}

#[test]
fn a_body_that_does_not_come_in_time_is_answered_408_and_reset() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let h = frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("POST", "/publish", &[]),
    );
    p.receive(&mut host, &h, SEC);
    p.receive(&mut host, &frame(DATA, 0, 1, &[0; 100]), SEC);
    let due = p.next_deadline().expect("the body's deadline");
    assert_eq!(due, SEC + 10 * SEC);
    p.on_timer(&mut host, due);
    assert_eq!(host.bodies, 0);
    let f = drain(&mut p, &mut host, due);
    assert_eq!(
        kinds(&f),
        [(HEADERS, 1), (WINDOW_UPDATE, 0), (DATA, 1), (RST_STREAM, 1)]
    );
    assert_eq!(status(&f[0].1), 408);
    assert_eq!(code(&f[3].1), NO_ERROR);
}

#[test]
fn a_header_block_left_open_ends_the_connection_in_time() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let block = request_block("GET", "/x", &[]);
    p.receive(&mut host, &frame(HEADERS, 0, 1, &block[..4]), 2 * SEC);
    assert_eq!(p.next_deadline(), Some(12 * SEC));
    p.on_timer(&mut host, 12 * SEC);
    assert_eq!(p.failed(), Some(PROTOCOL_ERROR));
}

#[test]
fn an_idle_connection_goes_away() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let due = p.next_deadline().expect("idle deadline");
    assert_eq!(due, SEC + 60 * SEC);
    p.on_timer(&mut host, due);
    assert!(p.is_done());
    let f = drain(&mut p, &mut host, due);
    assert_eq!(kinds(&f), [(GOAWAY, 0)]);
    assert_eq!(code(&f[0].1), NO_ERROR);
}

#[test]
fn an_sse_stream_is_written_within_its_window_and_ends_when_reset() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    // A window of 10 bytes per stream.
    p.receive(&mut host, &frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]), SEC);
    let h = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("GET", "/events", &[]),
    );
    p.receive(&mut host, &h, SEC);
    assert_eq!(p.next_deadline(), None, "an idle SSE stream keeps no timer");
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(SETTINGS, 0), (HEADERS, 1), (DATA, 1)]);
    assert_eq!(f[2].1.len(), 10, "no more than the window");
    p.receive(
        &mut host,
        &frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()),
        SEC,
    );
    host.push(1, b"data: x\n\n");
    let f = drain(&mut p, &mut host, SEC);
    let data: Vec<u8> = f.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(data, b"0\n\ndata: x\n\n");
    p.receive(
        &mut host,
        &frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()),
        SEC,
    );
    assert_eq!(host.ended, [(1, 7, CloseReason::ClientClosed)]);
    assert_eq!(p.streams(), 0);
}

#[test]
fn frames_on_closed_streams_are_told_apart_by_how_they_closed() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let get = |id| {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("GET", "/x", &[]),
        )
    };
    p.receive(&mut host, &get(1), SEC);
    drain(&mut p, &mut host, SEC);
    // Closed normally: DATA is a stream error...
    p.receive(&mut host, &frame(DATA, 0, 1, b"x"), SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f)[0], (RST_STREAM, 1));
    assert_eq!(code(&f[0].1), STREAM_CLOSED);
    // ...WINDOW_UPDATE and PRIORITY are ignored...
    p.receive(
        &mut host,
        &frame(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()),
        SEC,
    );
    p.receive(&mut host, &frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]), SEC);
    assert!(drain(&mut p, &mut host, SEC).is_empty());
    // ...and HEADERS a connection error.
    p.receive(&mut host, &get(1), SEC);
    assert_eq!(p.failed(), Some(STREAM_CLOSED));
}

#[test]
fn an_answer_that_comes_later_and_a_stream_reset_meanwhile() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let later = |id| {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("GET", "/later", &[]),
        )
    };
    p.receive(&mut host, &later(1), SEC);
    p.receive(&mut host, &later(3), SEC);
    p.receive(
        &mut host,
        &frame(RST_STREAM, 0, 3, &CANCEL.to_be_bytes()),
        SEC,
    );
    assert_eq!(host.cancelled, [3], "the route of a reset stream stops");
    let (id, answer) = host.answer_later().expect("stream 1 waits");
    p.answer(&mut host, id, answer, SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(HEADERS, 1), (DATA, 1)]);
    // An SSE answer for a stream already gone is ended at once.
    let events = Answer::Events {
        headers: Default::default(),
        key: 99,
        serial: 1,
    };
    host.events.insert(
        99,
        super::testing::Events {
            serial: 1,
            ..Default::default()
        },
    );
    p.answer(&mut host, 3, events, SEC);
    assert_eq!(host.ended, [(99, 1, CloseReason::ClientClosed)]);
}

#[test]
fn request_heads_kept_at_once_are_bounded() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    // Heads of ~8.2 KB waiting for their bodies: the budget (4 × 16 KiB) takes
    // seven, the eighth and later are refused; the others go on.
    let big = "v".repeat(8_000);
    let mut refused = Vec::new();
    for i in 0..10u32 {
        let id = 1 + 2 * i;
        let block = request_block("POST", "/publish", &[("x-big", &big)]);
        p.receive(&mut host, &frame(HEADERS, END_HEADERS, id, &block), SEC);
        for (h, payload) in drain(&mut p, &mut host, SEC) {
            if h.kind == RST_STREAM {
                assert_eq!(code(&payload), REFUSED_STREAM);
                refused.push(h.stream);
            }
        }
    }
    assert_eq!(refused, [15, 17, 19]);
    assert_eq!(p.failed(), None);
    // One completes: its head goes, room for another.
    p.receive(&mut host, &frame(DATA, END_STREAM, 1, b"{}"), SEC);
    drain(&mut p, &mut host, SEC);
    let block = request_block("POST", "/publish", &[("x-big", &big)]);
    p.receive(&mut host, &frame(HEADERS, END_HEADERS, 21, &block), SEC);
    let f = drain(&mut p, &mut host, SEC);
    assert!(
        f.iter().all(|(h, _)| h.kind != RST_STREAM),
        "{:?}",
        kinds(&f)
    );
}

#[test]
fn the_stated_bound_of_a_connection() {
    let bound = limits().connection_bound();
    eprintln!("one HTTP/2 connection holds at most {bound} B with default flags");
    assert!(bound <= 288 << 10, "{bound}");
}

#[test]
fn a_request_held_for_the_answer_budget_is_not_served_once_the_connection_failed() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let get = |id, path| {
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("GET", path, &[]),
        )
    };
    // 64 answers to come fill the answer budget: the next request waits.
    let routes = (super::limits::ANSWER_BUDGET / super::limits::ROUTE_COST) as u32;
    for k in 0..routes {
        p.receive(&mut host, &get(2 * k + 1, "/later"), SEC);
    }
    let held = 2 * routes + 1;
    p.receive(&mut host, &get(held, "/x"), SEC);
    assert_eq!(host.dispatched.len(), routes as usize, "held");
    drain(&mut p, &mut host, SEC);
    // A reset makes room, and a connection error follows in the same read.
    let mut input = frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes());
    input.extend(frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()));
    p.receive(&mut host, &input, SEC);
    assert_eq!(p.failed(), Some(PROTOCOL_ERROR));
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(GOAWAY, 0)], "nothing after GOAWAY");
    assert_eq!(host.dispatched.len(), routes as usize, "not served");
}

#[test]
fn an_answer_that_comes_after_the_connection_failed_is_not_written() {
    let mut host = MemoryHost::default();
    let mut p = open(&mut host);
    let later = frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("GET", "/later", &[]),
    );
    p.receive(&mut host, &later, SEC);
    // A connection error; `conn` still hands over the answers that came.
    p.receive(
        &mut host,
        &frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()),
        SEC,
    );
    assert_eq!(p.failed(), Some(PROTOCOL_ERROR));
    let (id, answer) = host.answer_later().expect("stream 1 waits");
    p.answer(&mut host, id, answer, SEC);
    let events = Answer::Events {
        headers: Default::default(),
        key: 99,
        serial: 1,
    };
    host.events.insert(
        99,
        super::testing::Events {
            serial: 1,
            ..Default::default()
        },
    );
    p.answer(&mut host, id, events, SEC);
    assert_eq!(
        host.ended,
        [(99, 1, CloseReason::ClientClosed)],
        "ended at once"
    );
    let f = drain(&mut p, &mut host, SEC);
    assert_eq!(kinds(&f), [(GOAWAY, 0)], "nothing after GOAWAY");
    p.end_all(&mut host);
    assert_eq!(host.bodies, 0);
    assert_eq!(p.answers_accounted(), (0, 0));
}
