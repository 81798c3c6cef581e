//! The open-file limit. Every stream is a file descriptor, and most hosts and
//! containers start a process with a soft `RLIMIT_NOFILE` of 1,024 (Go raises it
//! by itself at start; Rust programs do not). This module owns what herald does
//! about it: raise the soft limit to the hard one at start, derive how many
//! streams the limit leaves room for (the rest is kept for what is not a stream:
//! publishes, probes, scrapes, Redis, the shards' pollers), and report repeated
//! failures at that edge at most once per second, with a count, instead of once
//! per attempt.

use std::sync::atomic::{AtomicU64, Ordering};

/// The process's open-file limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

/// Raise the soft open-file limit as far as the hard limit (and the kernel's
/// `fs.nr_open`) allow. Never lowers it; on failure the limit stays as found.
pub fn raise() -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before: u64 = lim.rlim_cur;
    let hard: u64 = lim.rlim_max;
    // An unlimited hard limit cannot be the soft one: the kernel caps both at
    // fs.nr_open.
    let ceiling = if lim.rlim_max == libc::RLIM_INFINITY {
        nr_open().unwrap_or(1 << 20)
    } else {
        hard
    };
    let mut soft = before;
    if lim.rlim_cur != libc::RLIM_INFINITY && before < ceiling {
        let want = libc::rlimit {
            rlim_cur: ceiling,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            soft = ceiling;
        }
    }
    Ok(FdLimit {
        before,
        soft: if lim.rlim_cur == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            soft
        },
        hard: if lim.rlim_max == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            hard
        },
    })
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Streams that `soft` descriptors leave room for on a pod of `shards` shards:
/// the limit less a reserve, so that a refused connect can still be accepted and
/// answered `503`, and `/health/live`, `/metrics` and publishes keep working when
/// the streams have taken their share. The reserve is 1/32 of the limit, at
/// least 64 plus 4 per shard (each shard's poller, waker and timers), at most
/// half the limit.
pub fn stream_room(soft: u64, shards: usize) -> usize {
    let floor = 64 + 4 * shards as u64;
    let reserve = (soft / 32).max(floor).min(soft / 2);
    usize::try_from(soft - reserve).unwrap_or(usize::MAX)
}

/// A condition reported at most once per second, with how often it happened
/// since the previous report (shared by every shard).
pub struct Throttle {
    last_ms: AtomicU64,
    count: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle {
            last_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Count one occurrence at `now_ms` (monotonic milliseconds). Returns the
    /// number of occurrences to report (this one included) when a second has
    /// passed since the previous report, `None` otherwise.
    pub fn hit(&self, now_ms: u64) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        // `last == 0`: never reported (now_ms is at least 1 below).
        if last != 0 && now_ms < last.saturating_add(1000) {
            return None;
        }
        self.last_ms
            .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.count.swap(0, Ordering::Relaxed).max(1))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// Failed `accept` calls (descriptors exhausted, or the kernel short of memory).
pub static ACCEPT_FAILED: Throttle = Throttle::new();
/// Connects refused because the streams filled the room the open-file limit leaves.
pub static REFUSED_AT_LIMIT: Throttle = Throttle::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_keeps_a_reserve() {
        assert_eq!(stream_room(600, 2), 600 - 72);
        assert_eq!(stream_room(1024, 1), 1024 - 68);
        assert_eq!(stream_room(20_000, 2), 20_000 - 625);
        assert_eq!(stream_room(100, 8), 50);
        assert!(stream_room(u64::MAX, 1) > 1 << 40);
    }

    #[test]
    fn throttle_reports_once_per_second_with_a_count() {
        let t = Throttle::new();
        assert_eq!(t.hit(5_000), Some(1));
        assert_eq!(t.hit(5_100), None);
        assert_eq!(t.hit(5_900), None);
        assert_eq!(t.hit(6_000), Some(3));
        assert_eq!(t.hit(6_500), None);
        assert_eq!(t.hit(9_000), Some(2));
    }

    #[test]
    fn raise_never_lowers() {
        let l = raise().unwrap();
        assert!(l.soft >= l.before);
        assert!(l.soft <= l.hard);
    }
}
