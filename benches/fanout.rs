//! Micro-benchmarks of the fan-out hot path: framing an event, queueing it on
//! every matching connection of one shard's table (no sockets), a connection's
//! queue push/drain cycle, and the heartbeat tick.
//!
//! The fan-out benches time only `ConnTable::deliver` (or
//! `deliver_all_unnumbered`): each iteration's queues are drained with
//! `OutQueue::consume` outside the timed region (`iter_custom`). They report
//! `Throughput::Elements(<connections reached>)`, so criterion's `thrpt` line is
//! deliveries per second and `time / elements` is the cost of one delivery.
//!
//! Run: `cargo bench --bench fanout -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::conn::table::NewConn;
use herald::conn::{ConnTable, OutQueue, QueueLimits, QueuedFrame};
use herald::event::{Event, Target};
use herald::sse::frame;

const CONNS: usize = 10_000;
const NAMED_USERS: usize = 1_000;
const TOPIC: &str = "news";

const LIMITS: QueueLimits = QueueLimits {
    max_frames: 1024,
    max_bytes: 4 << 20,
};

/// 100 bytes of JSON-ish payload on one line.
fn payload_100() -> String {
    let mut s = String::from("{\"kind\":\"notice\",\"body\":\"");
    while s.len() < 98 {
        s.push('x');
    }
    s.push_str("\"}");
    assert_eq!(s.len(), 100);
    s
}

/// 1 KiB of data in 16 lines of 63 characters plus a line break each.
fn payload_multiline_1k() -> String {
    let mut s = String::with_capacity(1024);
    for i in 0..16u8 {
        let letter = char::from(b'a' + i);
        s.push_str(&letter.to_string().repeat(63));
        s.push('\n');
    }
    assert_eq!(s.len(), 1024);
    s
}

fn user_name(i: usize) -> String {
    format!("user-{i}")
}

/// A table of `CONNS` connections, one per user `user-<i>`, all subscribed to
/// `TOPIC`; returns it with its slab keys.
fn table() -> (ConnTable, Vec<usize>) {
    let mut t = ConnTable::new(LIMITS);
    let topics: [Box<str>; 1] = [TOPIC.into()];
    let keys = (0..CONNS)
        .map(|i| {
            let user = user_name(i);
            t.insert(NewConn {
                serial: i as u64,
                user: &user,
                topics: &topics,
                last_id: 0,
                partition: 0,
            })
        })
        .collect();
    (t, keys)
}

/// What the connection writers do between publishes: write out everything queued.
fn drain(t: &mut ConnTable, keys: &[usize]) {
    for &k in keys {
        let q = &mut t.get_mut(k).expect("live key").queue;
        let n = q.bytes();
        q.consume(n, |ns| {
            black_box(ns);
        });
    }
}

/// Time `deliver` of a 100-byte event to `target`, draining every queue between
/// iterations outside the timed region. The event's id grows every iteration
/// (deliver skips ids at or below a connection's `last_id`).
fn bench_deliver(c: &mut Criterion, name: &str, target: Target, reached: u64) {
    let (mut t, keys) = table();
    let data = payload_100();
    let mut ev = Event::new(0, target, frame::event(1, "message", &data), 1);
    // Warm: every queue gets its ring allocated once, as a live shard's would.
    for _ in 0..4 {
        ev.id += 1;
        assert_eq!(t.deliver(&ev).queued, reached);
        drain(&mut t, &keys);
    }
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(reached));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ev.id += 1;
                let start = Instant::now();
                let d = t.deliver(black_box(&ev));
                total += start.elapsed();
                debug_assert_eq!(d.queued, reached);
                black_box(d);
                drain(&mut t, &keys);
            }
            total
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    bench_deliver(c, "all_10k", Target::All, CONNS as u64);
    bench_deliver(
        c,
        "topic_10k",
        Target::Topics(vec![Box::<str>::from(TOPIC)].into_boxed_slice()),
        CONNS as u64,
    );
    // 1,000 named users spread over the table (every 10th connection).
    let users: Box<[Box<str>]> = (0..NAMED_USERS)
        .map(|i| user_name(i * (CONNS / NAMED_USERS)).into_boxed_str())
        .collect();
    bench_deliver(
        c,
        "users_1k_of_10k",
        Target::Users(users),
        NAMED_USERS as u64,
    );
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let small = payload_100();
    g.throughput(Throughput::Bytes(small.len() as u64));
    let mut id = 1_000_000u64;
    g.bench_function("event_100B", |b| {
        b.iter(|| {
            id += 1;
            frame::event(black_box(id), black_box("message"), black_box(&small))
        })
    });
    let big = payload_multiline_1k();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("event_multiline_1KiB", |b| {
        b.iter(|| {
            id += 1;
            frame::event(black_box(id), black_box("message"), black_box(&big))
        })
    });
    g.finish();
}

fn queue(c: &mut Criterion) {
    let frames: Vec<Bytes> = (0..16)
        .map(|i| frame::event(i + 1, "message", &payload_100()))
        .collect();
    let mut q = OutQueue::default();
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(16));
    g.bench_function("push_drain_16", |b| {
        b.iter(|| {
            for f in &frames {
                let qf = QueuedFrame {
                    bytes: f.clone(),
                    published_ns: 1,
                };
                q.push(qf, LIMITS).expect("within limits");
            }
            let n = q.bytes();
            q.consume(black_box(n), |ns| {
                black_box(ns);
            })
        })
    });
    g.finish();
}

fn heartbeat(c: &mut Criterion) {
    let (mut t, keys) = table();
    // As the shard's heartbeat loop does: one frame per tick, shared by all.
    let hb = frame::heartbeat(1_700_000_000_000);
    for _ in 0..4 {
        assert_eq!(t.deliver_all_unnumbered(&hb).queued, CONNS as u64);
        drain(&mut t, &keys);
    }
    let mut g = c.benchmark_group("heartbeat");
    g.throughput(Throughput::Elements(CONNS as u64));
    g.bench_function("tick_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let d = t.deliver_all_unnumbered(black_box(&hb));
                total += start.elapsed();
                black_box(d);
                drain(&mut t, &keys);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, framing, fanout, queue, heartbeat);
criterion_main!(benches);
