//! Counting what a client makes herald do for nothing: frames without effect,
//! SETTINGS and PINGs (each answered), streams reset (by the client, or by
//! herald because of what the client sent). Each is a leaky bucket
//! ([`super::limits`] gives sizes and rates); a full one ends the connection
//! with ENHANCE_YOUR_CALM. A bucket is 8 bytes and needs no timer: it drains
//! by the time elapsed when the next frame arrives.

use super::limits::{Rate, PINGS, RESETS, SETTINGS_FRAMES, USELESS_FRAMES};

/// One leaky bucket.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Frames in the bucket, in thousandths (so that drains below one frame
    /// per millisecond add up).
    level: u32,
    /// When it was last drained, in milliseconds of the connection's clock.
    at_ms: u32,
}

impl Bucket {
    /// Add one frame at `now_ms`; false when the bucket overflows.
    fn add(&mut self, rate: Rate, now_ms: u32) -> bool {
        let elapsed = now_ms.wrapping_sub(self.at_ms);
        self.at_ms = now_ms;
        let drained = u64::from(elapsed) * u64::from(rate.per_sec);
        self.level = (u64::from(self.level).saturating_sub(drained)) as u32;
        self.level = self.level.saturating_add(1000);
        self.level <= rate.burst.saturating_mul(1000)
    }
}

/// What a flood was made of (the label of the connection's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Useless,
    Settings,
    Pings,
    Resets,
}

impl Flood {
    pub fn label(self) -> &'static str {
        match self {
            Flood::Useless => "useless_frames",
            Flood::Settings => "settings",
            Flood::Pings => "pings",
            Flood::Resets => "resets",
        }
    }
}

/// The buckets of one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Floods {
    useless: Bucket,
    settings: Bucket,
    pings: Bucket,
    resets: Bucket,
}

impl Floods {
    /// Count one frame of `kind` at `now_ns` (the connection's monotonic
    /// clock); `Err` when its bucket overflows.
    pub fn count(&mut self, kind: Flood, now_ns: u64) -> Result<(), Flood> {
        // Milliseconds, wrapping after 49 days: only differences are used.
        let now_ms = (now_ns / 1_000_000) as u32;
        let (bucket, rate) = match kind {
            Flood::Useless => (&mut self.useless, USELESS_FRAMES),
            Flood::Settings => (&mut self.settings, SETTINGS_FRAMES),
            Flood::Pings => (&mut self.pings, PINGS),
            Flood::Resets => (&mut self.resets, RESETS),
        };
        if bucket.add(rate, now_ms) {
            Ok(())
        } else {
            Err(kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_burst_passes_and_a_flood_does_not() {
        let mut f = Floods::default();
        let t = 5_000 * MS;
        for _ in 0..PINGS.burst {
            assert!(f.count(Flood::Pings, t).is_ok());
        }
        assert_eq!(f.count(Flood::Pings, t), Err(Flood::Pings));
    }

    #[test]
    fn the_bucket_drains_with_time() {
        let mut f = Floods::default();
        let mut t = 1_000 * MS;
        // A sustained rate at the drain rate never overflows.
        for _ in 0..10 * PINGS.burst {
            assert!(f.count(Flood::Pings, t).is_ok());
            t += 1_000 * MS / u64::from(PINGS.per_sec);
        }
        // Twice the rate does, after about burst / rate seconds.
        let mut refused_after = None;
        for i in 0..10 * PINGS.burst {
            if f.count(Flood::Pings, t).is_err() {
                refused_after = Some(i);
                break;
            }
            t += 500 * MS / u64::from(PINGS.per_sec);
        }
        let n = refused_after.expect("a flood at twice the rate is refused");
        assert!((PINGS.burst..=2 * PINGS.burst + 2).contains(&n), "{n}");
    }

    #[test]
    fn kinds_are_counted_apart() {
        let mut f = Floods::default();
        for _ in 0..RESETS.burst {
            f.count(Flood::Resets, 0).unwrap();
        }
        assert!(f.count(Flood::Settings, 0).is_ok());
        assert!(f.count(Flood::Resets, 0).is_err());
    }
}
