//! The fan-out hot path allocates nothing per delivery (design: "Per delivery: no
//! allocation, no copy of the payload, no lock").
//!
//! A counting global allocator wraps `System`. Counting is switched on per thread
//! (a `thread_local` flag) and counted per thread, so the test harness's other
//! threads, and the other tests of this file running in parallel, never show up
//! in a test's window.
//!
//! Each test builds a table of 10,000 connections, warms it (delivers and drains a
//! few events so every connection's queue has its ring allocated, as on a live
//! shard), then counts the allocations of further deliveries. What is made once
//! per publish (the framed `Event`, the heartbeat frame of a tick) is made outside
//! the counted window, exactly as the shard receives it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use herald::conn::table::NewConn;
use herald::conn::{ConnTable, QueueLimits};
use herald::event::{Event, Target};
use herald::sse::frame;

struct Counting;

const KEEP: usize = 8;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    /// Sizes of the first `KEEP` allocations of the window, for the failure message.
    static SIZES: Cell<[usize; KEEP]> = const { Cell::new([0; KEEP]) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator (thread teardown).
    let _ = ON.try_with(|on| {
        if on.get() {
            let n = COUNT.with(|c| {
                let n = c.get();
                c.set(n + 1);
                n
            });
            if (n as usize) < KEEP {
                SIZES.with(|s| {
                    let mut a = s.get();
                    a[n as usize] = size;
                    s.set(a);
                });
            }
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`, and the sizes of the first few.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64, Vec<usize>) {
    COUNT.with(|c| c.set(0));
    SIZES.with(|s| s.set([0; KEEP]));
    ON.with(|on| on.set(true));
    let r = f();
    ON.with(|on| on.set(false));
    let n = COUNT.with(|c| c.get());
    let sizes = SIZES.with(|s| s.get())[..(n as usize).min(KEEP)].to_vec();
    (r, n, sizes)
}

const CONNS: usize = 10_000;
const NAMED_USERS: usize = 1_000;
const TOPIC: &str = "news";
const LIMITS: QueueLimits = QueueLimits {
    max_frames: 1024,
    max_bytes: 4 << 20,
};

fn user_name(i: usize) -> String {
    format!("user-{i}")
}

/// 10,000 connections, one per user, each subscribed to `TOPIC` and one of ten
/// smaller topics.
fn table() -> (ConnTable, Vec<usize>) {
    let mut t = ConnTable::new(LIMITS);
    let keys = (0..CONNS)
        .map(|i| {
            let topics: [Box<str>; 2] = [TOPIC.into(), format!("t{}", i % 10).into()];
            t.insert(NewConn {
                serial: i as u64,
                user: &user_name(i),
                topics: &topics,
                last_id: 0,
                partition: 0,
            })
        })
        .collect();
    (t, keys)
}

fn drain(t: &mut ConnTable, keys: &[usize]) -> usize {
    let mut frames = 0;
    for &k in keys {
        let q = &mut t.get_mut(k).expect("live key").queue;
        let n = q.bytes();
        frames += q.consume(n, |_| ()).frames;
    }
    frames
}

fn payload_100() -> String {
    let mut s = String::from("{\"kind\":\"notice\",\"body\":\"");
    s.push_str(&"x".repeat(98 - s.len()));
    s.push_str("\"}");
    assert_eq!(s.len(), 100);
    s
}

/// An event as the broker makes it: framed once, before any shard sees it.
fn event(id: u64, target: Target) -> Event {
    Event::new(id, target, frame::event(id, "message", &payload_100()), 1)
}

fn all() -> Target {
    Target::All
}

fn topic() -> Target {
    Target::Topics([Box::<str>::from(TOPIC)].into())
}

fn users() -> Target {
    Target::Users(
        (0..NAMED_USERS)
            .map(|i| user_name(i * (CONNS / NAMED_USERS)).into_boxed_str())
            .collect(),
    )
}

/// Warm `t`: queue four frames on every connection at once (so each ring holds
/// at least that many), then drain. Returns the next free event id.
fn warm(t: &mut ConnTable, keys: &[usize]) -> u64 {
    for id in 1..=4 {
        assert_eq!(t.deliver(&event(id, all())).queued, CONNS as u64);
    }
    assert_eq!(drain(t, keys), 4 * CONNS);
    5
}

/// Deliver `rounds` fresh events built by `target` (outside the window), counting
/// only the `deliver` calls; drain between rounds, outside the window too.
fn assert_deliver_allocates_nothing(target: fn() -> Target, reached: u64) {
    let (mut t, keys) = table();
    let first = warm(&mut t, &keys);
    for id in first..first + 8 {
        let ev = event(id, target());
        let (d, n, sizes) = allocations(|| t.deliver(&ev));
        assert_eq!(d.queued, reached, "every matching connection got the event");
        assert_eq!(d.slow_closed, 0);
        assert_eq!(
            n,
            0,
            "ConnTable::deliver to {reached} connections ({:?}) allocated {n} times \
             (first sizes {sizes:?})",
            ev.target.label()
        );
        drain(&mut t, &keys);
    }
}

#[test]
fn deliver_to_all_10k_allocates_nothing() {
    assert_deliver_allocates_nothing(all, CONNS as u64);
}

#[test]
fn deliver_to_a_topic_of_10k_allocates_nothing() {
    assert_deliver_allocates_nothing(topic, CONNS as u64);
}

#[test]
fn deliver_to_1k_named_users_allocates_nothing() {
    assert_deliver_allocates_nothing(users, NAMED_USERS as u64);
}

#[test]
fn several_deliveries_queued_back_to_back_allocate_nothing() {
    // Writers have not run between publishes: frames pile up in the warmed rings.
    let (mut t, keys) = table();
    let mut id = warm(&mut t, &keys);
    let evs: Vec<Event> = [all(), topic(), users()]
        .into_iter()
        .map(|target| {
            id += 1;
            event(id, target)
        })
        .collect();
    let (queued, n, sizes) = allocations(|| evs.iter().map(|ev| t.deliver(ev).queued).sum::<u64>());
    assert_eq!(queued, 2 * CONNS as u64 + NAMED_USERS as u64);
    assert_eq!(
        n, 0,
        "three back-to-back deliveries allocated {n} times (first sizes {sizes:?})"
    );
    drain(&mut t, &keys);
}

#[test]
fn one_frame_to_10k_cold_connections_allocates_nothing() {
    // Never warmed: a frame to an idle stream takes the queue's inline front slot.
    let (mut t, keys) = table();
    let ev = event(1, all());
    let (d, n, sizes) = allocations(|| t.deliver(&ev));
    assert_eq!(d.queued, CONNS as u64);
    assert_eq!(
        n, 0,
        "one delivery to 10k cold connections allocated {n} times (first sizes {sizes:?})"
    );
    drain(&mut t, &keys);
    let hb = frame::heartbeat(1_700_000_000_000);
    let _shared = hb.clone(); // see heartbeat_tick_to_10k_allocates_nothing
    let (d, n, sizes) = allocations(|| t.deliver_all_unnumbered(&hb));
    assert_eq!(d.queued, CONNS as u64);
    assert_eq!(
        n, 0,
        "one heartbeat to 10k cold connections allocated {n} times (first sizes {sizes:?})"
    );
}

#[test]
fn draining_the_queues_allocates_nothing() {
    let (mut t, keys) = table();
    let id = warm(&mut t, &keys);
    let ev = event(id, all());
    t.deliver(&ev);
    let (frames, n, sizes) = allocations(|| drain(&mut t, &keys));
    assert_eq!(frames, CONNS);
    assert_eq!(
        n, 0,
        "OutQueue::consume over 10k queues allocated {n} times (first sizes {sizes:?})"
    );
}

#[test]
fn heartbeat_tick_to_10k_allocates_nothing() {
    let (mut t, keys) = table();
    warm(&mut t, &keys);
    for tick in 0..8u64 {
        // As the shard's heartbeat loop does: one freshly framed buffer per tick.
        // `frame::unnumbered` sizes its buffer exactly (len == capacity), so the
        // frozen `Bytes` is a "promotable" Vec; its first clone, inside
        // `deliver_heartbeat`, allocates the 24-byte shared header. One
        // allocation per tick (not per connection), but not zero. The tick
        // frees the rings the warm-up grew (a free is not counted).
        let hb = frame::heartbeat(1_700_000_000_000 + tick * 25_000);
        let (d, n, sizes) = allocations(|| t.deliver_heartbeat(&hb));
        assert_eq!(d.queued, CONNS as u64);
        assert_eq!(
            n, 0,
            "deliver_heartbeat to 10k connections allocated {n} times \
             (first sizes {sizes:?})"
        );
        drain(&mut t, &keys);
    }
}
