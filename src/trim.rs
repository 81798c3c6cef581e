//! Giving the heap back after a burst of connections.
//!
//! Opening a connection allocates far more for a moment than the connection
//! keeps: a TLS handshake (rustls' buffers and state, several KB), the request's
//! head and route. After a reconnect storm (a deploy, a network blip: tens of
//! thousands of clients at once) those freed blocks sit between the streams'
//! long-lived allocations, and the allocator keeps them: measured here, 10,000
//! HTTP/2 streams left ~10 MB free but resident. A thread of its own watches the
//! connections accepted and, once a burst of at least [`MIN_BURST`] is over (a
//! [`TICK`] without one), asks glibc to return the free pages of every arena
//! (`malloc_trim`); under constant churn every 30 s at most. A trim takes each
//! arena's lock while it walks that arena's free blocks (about a millisecond
//! for the heaps measured here), so it runs once per burst, not per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Connections accepted by every shard (relaxed: only its changes matter).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// How often the thread looks: a burst is over after one look without a new
/// connection.
const TICK: Duration = Duration::from_millis(250);
/// Connections a burst must bring before it is worth a trim.
const MIN_BURST: u64 = 64;
/// Under constant churn (never a quiet tick), a trim at most this often (in
/// ticks: 30 s).
const BUSY_EVERY: u32 = 120;

/// A connection was accepted.
pub fn accepted() {
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
}

/// Start the thread, once per process however many servers it starts (glibc
/// only: other allocators return memory by themselves or not at all).
pub fn spawn() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("herald-trim".into())
            .spawn(run);
    });
}

fn run() {
    let mut trimmed_at = 0;
    let mut last = 0;
    let mut busy_ticks = 0;
    loop {
        std::thread::sleep(TICK);
        let now = ACCEPTED.load(Ordering::Relaxed);
        let burst = now.wrapping_sub(trimmed_at) >= MIN_BURST;
        let quiet = now == last;
        busy_ticks = if quiet { 0 } else { busy_ticks + 1 };
        last = now;
        if burst && (quiet || busy_ticks >= BUSY_EVERY) {
            trim();
            trimmed_at = now;
            busy_ticks = 0;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
