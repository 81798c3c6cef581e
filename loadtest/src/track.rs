//! Per-connection sequence accounting that tolerates reordering.
//!
//! In a measured phase each subscriber expects one class of sequence numbers
//! (see [`Phase`]): all of them (fan-out) or those with
//! `seq % users == index % users` (targeted). Within its class a sequence
//! number has a class index `k = seq / stride`, and the connection expects the
//! class indices `start..stop` minus the publisher's *holes* (sequence
//! numbers a publisher took but never used, see `publisher`).
//!
//! Several publishers race, so events may arrive out of order. A [`Track`]
//! keeps, behind `top` (one past the highest class index received):
//!
//! * a bitmap of the last [`WINDOW`] class indices (`[top - WINDOW, top)`,
//!   bit `k % WINDOW`), set when received;
//! * the class indices that slid out of that window unseen, as a short sorted
//!   list of `[lo, hi)` ranges (empty unless something went missing);
//! * the number of distinct class indices received.
//!
//! An arrival at or above `top` slides the window up (what slides out unseen
//! goes to the hole list) and is fresh. An arrival inside the window is a
//! duplicate if its bit is set, else a fresh *reordered* delivery. An arrival
//! below the window is a fresh reordered delivery if it is in the hole list
//! (and leaves it), else a duplicate. Loss is computed at the end:
//! expected − distinct received, so it is exact, as are duplicates and
//! reorders. The only exception: the hole list keeps at most [`MAX_HOLES`]
//! ranges; past that the oldest range is forgotten (its events stay counted as
//! lost), and should one of them still arrive it can no longer be told apart
//! from a duplicate: it is counted as a duplicate and as *unclassified* (the
//! report warns), so loss and duplicates are exact whenever unclassified is 0.
//!
//! Memory per connection in a phase: 40 bytes inline (in the connection) plus
//! one heap block of 128 bytes (bitmap) + 24 (hole list header) + 8 (floor);
//! the hole list itself allocates only when events went missing, at most
//! `MAX_HOLES` × 16 bytes. Outside a phase the heap block is freed.
//! The in-order path costs one bit test and one bit set per event.

/// Class indices remembered behind the highest one received.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;
/// Gap ranges kept below the window before the oldest is forgotten.
pub const MAX_HOLES: usize = 32;

/// The measured phase a thread is in (the same on every thread).
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub active: bool,
    /// First sequence number of the phase.
    pub first: u64,
    /// 0: fan-out (every connection expects every event); else targeted to
    /// user `seq % users`, connection `i` being user `i % users`.
    pub users: u64,
    /// One past the last sequence number published, once known.
    pub end: Option<u64>,
}

impl Phase {
    /// (stride, offset) of the class connection `index` expects.
    pub fn class(&self, index: u64) -> (u64, u64) {
        if self.users > 0 {
            (self.users, index % self.users)
        } else {
            (1, 0)
        }
    }

    /// Number of sequence numbers below `bound` that connection `index` expects
    /// (ignoring holes): the class index of the first one at or above `bound`.
    pub fn below(&self, index: u64, bound: u64) -> u64 {
        let (stride, off) = self.class(index);
        if bound <= off {
            0
        } else {
            (bound - off).div_ceil(stride)
        }
    }

    /// What connection `index` should receive in `[first, end)`, given the
    /// sorted unused sequence numbers `holes`.
    pub fn expect(&self, index: u64, end: u64, holes: &[u64]) -> Expect {
        let (stride, off) = self.class(index);
        let start = self.below(index, self.first);
        let stop = self.below(index, end).max(start);
        let mine = |h: &u64| *h >= self.first && *h < end && h % stride == off;
        let missing = holes.iter().filter(|h| mine(h)).count() as u64;
        // The last expected class index: skip holes at the top of the class.
        let mut last_top = stop;
        while last_top > start
            && holes
                .binary_search(&((last_top - 1) * stride + off))
                .is_ok()
        {
            last_top -= 1;
        }
        Expect {
            count: (stop - start).saturating_sub(missing),
            last_top,
        }
    }
}

/// What one connection should receive in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Events it should receive.
    pub count: u64,
    /// One past the class index of the last one (it has that one when
    /// `top >= last_top`).
    pub last_top: u64,
}

/// How an arrival was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// First delivery, in order (at or above everything seen so far).
    Fresh,
    /// First delivery, after a higher class index had arrived.
    Reordered,
    /// Received before.
    Duplicate,
    /// Below the remembered range: counted as a duplicate, but it might have
    /// been a very late first delivery (only after hole-list overflow).
    Unclassified,
}

impl Mark {
    pub fn fresh(self) -> bool {
        matches!(self, Mark::Fresh | Mark::Reordered)
    }
}

#[derive(Debug)]
struct Win {
    /// Bit `k % WINDOW`: class index `k` in `[top - WINDOW, top)` arrived.
    bits: [u64; WORDS],
    /// Class indices that slid out of the window unseen: sorted, disjoint
    /// `[lo, hi)` ranges.
    holes: Vec<(u64, u64)>,
    /// Ranges below this were forgotten (list overflow).
    floor: u64,
}

/// Per-connection sequence tracking (see the module doc).
#[derive(Debug, Default)]
pub struct Track {
    pub in_phase: bool,
    /// First expected class index.
    start: u64,
    /// One past the highest class index received (`start` before any).
    pub top: u64,
    /// Distinct expected class indices received.
    pub distinct: u64,
    win: Option<Box<Win>>,
}

impl Track {
    /// A tracker for a phase whose first expected class index is `start`.
    pub fn begin(start: u64) -> Track {
        Track {
            in_phase: true,
            start,
            top: start,
            distinct: 0,
            win: Some(Box::new(Win {
                bits: [0; WORDS],
                holes: Vec::new(),
                floor: start,
            })),
        }
    }

    /// Records the arrival of class index `k` (at least `start`).
    pub fn record(&mut self, k: u64) -> Mark {
        let Some(w) = self.win.as_mut() else {
            return Mark::Duplicate;
        };
        let mark = if k >= self.top {
            w.slide(self.start, self.top, k + 1);
            self.top = k + 1;
            w.set(k);
            Mark::Fresh
        } else if k + WINDOW >= self.top {
            if w.get(k) {
                Mark::Duplicate
            } else {
                w.set(k);
                Mark::Reordered
            }
        } else if w.take_hole(k) {
            Mark::Reordered
        } else if k < w.floor {
            Mark::Unclassified
        } else {
            Mark::Duplicate
        };
        if mark.fresh() {
            self.distinct += 1;
        }
        mark
    }

    /// Whether class index `k` was received: `None` when that can no longer
    /// be told (below the forgotten part of the hole list).
    pub fn has(&self, k: u64) -> Option<bool> {
        let w = self.win.as_ref()?;
        if k < self.start || k >= self.top {
            Some(false)
        } else if k + WINDOW >= self.top {
            Some(w.get(k))
        } else if k < w.floor {
            None
        } else {
            let i = w.holes.partition_point(|&(_, hi)| hi <= k);
            Some(!matches!(w.holes.get(i), Some(&(lo, _)) if lo <= k))
        }
    }

    /// Calls `f` with each class index in `[start, stop)` that never arrived,
    /// in increasing order, while `f` returns true; indices below the
    /// forgotten part of the hole list (see [`MAX_HOLES`]) are skipped.
    pub fn missing(&self, stop: u64, mut f: impl FnMut(u64) -> bool) {
        let Some(w) = self.win.as_ref() else {
            return;
        };
        let win_lo = self.top.saturating_sub(WINDOW).max(self.start);
        for &(lo, hi) in &w.holes {
            for k in lo.max(self.start)..hi.min(stop).min(win_lo) {
                if !f(k) {
                    return;
                }
            }
        }
        for k in win_lo..self.top.min(stop) {
            if !w.get(k) && !f(k) {
                return;
            }
        }
        for k in self.top.max(self.start)..stop {
            if !f(k) {
                return;
            }
        }
    }

    /// Gap ranges currently remembered below the window (for tests).
    #[cfg(test)]
    fn holes(&self) -> Vec<(u64, u64)> {
        self.win
            .as_ref()
            .map(|w| w.holes.clone())
            .unwrap_or_default()
    }
}

impl Win {
    #[inline]
    fn get(&self, k: u64) -> bool {
        let p = k % WINDOW;
        self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    #[inline]
    fn set(&mut self, k: u64) {
        let p = k % WINDOW;
        self.bits[(p / 64) as usize] |= 1 << (p % 64);
    }

    #[inline]
    fn clear(&mut self, k: u64) {
        let p = k % WINDOW;
        self.bits[(p / 64) as usize] &= !(1 << (p % 64));
    }

    /// Moves the window's top from `old` to `new` (> `old`): class indices
    /// `[old - WINDOW, new - WINDOW)` leave it, those that never arrived
    /// (and are expected, i.e. at least `start`) become holes.
    fn slide(&mut self, start: u64, old: u64, new: u64) {
        let leave_from = old.saturating_sub(WINDOW).max(start);
        let leave_to = new.saturating_sub(WINDOW).min(old);
        for j in leave_from..leave_to {
            if self.get(j) {
                self.clear(j);
            } else {
                self.push_hole(j, j + 1);
            }
        }
        // Indices that were skipped over entirely (a gap wider than the window).
        let skipped_to = new.saturating_sub(WINDOW);
        if skipped_to > old {
            self.push_hole(old, skipped_to);
        }
    }

    /// Appends `[lo, hi)` (holes are found in increasing order).
    fn push_hole(&mut self, lo: u64, hi: u64) {
        match self.holes.last_mut() {
            Some(last) if last.1 == lo => last.1 = hi,
            _ => {
                self.holes.push((lo, hi));
                self.trim();
            }
        }
    }

    fn trim(&mut self) {
        while self.holes.len() > MAX_HOLES {
            let (_, hi) = self.holes.remove(0);
            self.floor = self.floor.max(hi);
        }
    }

    /// Removes `k` from the hole list; false if it was not there.
    fn take_hole(&mut self, k: u64) -> bool {
        let i = self.holes.partition_point(|&(_, hi)| hi <= k);
        let Some(&(lo, hi)) = self.holes.get(i) else {
            return false;
        };
        if k < lo {
            return false;
        }
        match (lo == k, hi == k + 1) {
            (true, true) => {
                self.holes.remove(i);
            }
            (true, false) => self.holes[i].0 = k + 1,
            (false, true) => self.holes[i].1 = k,
            (false, false) => {
                self.holes[i].1 = k;
                self.holes.insert(i + 1, (k + 1, hi));
                self.trim();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `ks` and returns (fresh in order, reordered, duplicates, unclassified).
    fn feed(t: &mut Track, ks: impl IntoIterator<Item = u64>) -> (u64, u64, u64, u64) {
        let mut c = (0, 0, 0, 0);
        for k in ks {
            match t.record(k) {
                Mark::Fresh => c.0 += 1,
                Mark::Reordered => c.1 += 1,
                Mark::Duplicate => c.2 += 1,
                Mark::Unclassified => c.3 += 1,
            }
        }
        c
    }

    fn lost(t: &Track, expected: u64) -> u64 {
        expected - t.distinct
    }

    #[test]
    fn has_and_missing_match_a_set() {
        // Random arrivals with gaps, late ones and duplicates, against a set.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut exact = 0;
        for round in 0..20 {
            let stop = 500 + round * 150;
            let mut t = Track::begin(0);
            let mut seen = std::collections::BTreeSet::new();
            for k in 0..stop {
                let k: u64 = k;
                let r = next() % 100;
                if r < 1 {
                    continue; // lost
                }
                let k = if r < 4 {
                    k.saturating_sub(next() % 3000)
                } else {
                    k
                };
                t.record(k);
                seen.insert(k);
            }
            let mut miss = Vec::new();
            t.missing(stop, |k| {
                miss.push(k);
                true
            });
            let want: Vec<u64> = (0..stop).filter(|k| !seen.contains(k)).collect();
            if t.win.as_ref().unwrap().floor == 0 {
                assert_eq!(miss, want, "round {round}");
                assert_eq!(stop - t.distinct, want.len() as u64);
                exact += 1;
            }
            for k in 0..stop + 5 {
                if let Some(h) = t.has(k) {
                    assert_eq!(h, seen.contains(&k), "k {k}");
                }
            }
        }
        assert!(exact >= 10, "{exact}");
        // Early stop.
        let t = Track::begin(3);
        let mut n = 0;
        t.missing(100, |_| {
            n += 1;
            n < 5
        });
        assert_eq!(n, 5);
    }

    #[test]
    fn in_order() {
        let mut t = Track::begin(10);
        assert_eq!(feed(&mut t, 10..10_010), (10_000, 0, 0, 0));
        assert_eq!((t.distinct, t.top), (10_000, 10_010));
        assert_eq!(lost(&t, 10_000), 0);
        assert!(t.holes().is_empty());
    }

    #[test]
    fn reordered_within_the_window() {
        let mut t = Track::begin(0);
        // Pairs swapped, and a block of 500 reversed.
        let mut ks: Vec<u64> = (0..1000).collect();
        for p in ks.chunks_mut(2) {
            p.swap(0, 1);
        }
        ks[200..700].reverse();
        let (fresh, reordered, dups, _) = feed(&mut t, ks.iter().copied());
        assert_eq!(fresh + reordered, 1000);
        assert!(reordered >= 499, "{reordered}");
        assert_eq!(dups, 0);
        assert_eq!(lost(&t, 1000), 0);
        assert!(t.holes().is_empty());
        // The same 1000 again, backwards: all duplicates.
        ks.reverse();
        assert_eq!(feed(&mut t, ks[..].iter().copied()), (0, 0, 1000, 0));
        assert_eq!(t.distinct, 1000);
    }

    #[test]
    fn duplicates_in_and_below_the_window() {
        let mut t = Track::begin(0);
        feed(&mut t, 0..5000);
        // 4990 is in the window, 10 and 3000 are far below it.
        assert_eq!(feed(&mut t, [4990, 4999, 10, 3000, 0]), (0, 0, 5, 0));
        assert_eq!((t.distinct, lost(&t, 5000)), (5000, 0));
    }

    #[test]
    fn gaps_and_late_arrivals() {
        let mut t = Track::begin(0);
        feed(&mut t, 0..100);
        // 100..=104 missing, then 105..3000: the gap slides out of the window.
        feed(&mut t, 105..3000);
        assert_eq!(t.holes(), vec![(100, 105)]);
        // Two of them arrive very late: reordered, not lost, not duplicates.
        assert_eq!(feed(&mut t, [102, 100, 102]), (0, 2, 1, 0));
        assert_eq!(t.holes(), vec![(101, 102), (103, 105)]);
        // A gap still inside the window, filled later.
        feed(&mut t, 3001..3100);
        assert_eq!(feed(&mut t, [3000]), (0, 1, 0, 0));
        assert_eq!(lost(&t, 3100), 3);
        // A gap wider than the window: skipped indices become one hole range.
        feed(&mut t, [10_000]);
        // (8977..10_000 are still inside the window, unset.)
        assert_eq!(
            t.holes(),
            vec![(101, 102), (103, 105), (3100, 10_001 - WINDOW)]
        );
        assert_eq!(feed(&mut t, [5000, 9999, 5000]), (0, 2, 1, 0));
        assert_eq!(lost(&t, 10_001), 3 + 6900 - 2);
    }

    #[test]
    fn tail_loss() {
        // Expected 0..1000; the last 10 never come.
        let mut t = Track::begin(0);
        feed(&mut t, 0..990);
        assert_eq!(lost(&t, 1000), 10);
        // And a phase where nothing arrives.
        let t = Track::begin(7);
        assert_eq!(lost(&t, 50), 50);
    }

    #[test]
    fn phase_start_is_not_a_gap() {
        // Starting at class index 5000, nothing below is expected.
        let mut t = Track::begin(5000);
        feed(&mut t, 5000..7000);
        assert!(t.holes().is_empty());
        assert_eq!(t.distinct, 2000);
    }

    #[test]
    fn hole_list_overflow_is_flagged() {
        let mut t = Track::begin(0);
        // MAX_HOLES + 3 separate single gaps, all slid out of the window.
        let mut k = 0;
        for _ in 0..MAX_HOLES + 3 {
            feed(&mut t, [k]);
            k += 2;
        }
        feed(&mut t, k..k + 2 * WINDOW);
        assert_eq!(t.holes().len(), MAX_HOLES);
        // The oldest gaps (1, 3, 5) were forgotten: a late 1 is unclassified,
        // a late remembered one is still recognised, a seen one is a duplicate.
        assert_eq!(feed(&mut t, [1, 7, 8]), (0, 1, 1, 1));
    }

    /// Random streams against a set-based reference: drops, duplicates,
    /// publishers racing (local shuffles) and a few very late arrivals.
    #[test]
    fn matches_a_reference_on_random_streams() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let n = 20_000u64;
        let mut exact = 0;
        for round in 0..40 {
            // Drops: up to about 80 scattered gaps (more than MAX_HOLES in later rounds).
            let mut ks: Vec<u64> = (0..n).filter(|_| rnd(n) >= 2 * round).collect();
            // Duplicates, some time after the original.
            for _ in 0..rnd(50) {
                let i = rnd(ks.len() as u64) as usize;
                let at = i + 1 + rnd((ks.len() - i) as u64) as usize;
                ks.insert(at, ks[i]);
            }
            // Publishers racing: each block of 64 arrivals shuffled.
            for block in ks.chunks_mut(64) {
                for i in (1..block.len()).rev() {
                    block.swap(i, rnd(i as u64 + 1) as usize);
                }
            }
            // A few very late ones (far beyond the window).
            for _ in 0..rnd(4) {
                let i = rnd(ks.len() as u64 / 2) as usize;
                let k = ks.remove(i);
                let to = (i + 3 * WINDOW as usize).min(ks.len());
                ks.insert(to, k);
            }
            let mut t = Track::begin(0);
            let mut seen = std::collections::HashSet::new();
            let mut max = None::<u64>;
            let (mut r_fresh, mut r_reord, mut r_dup) = (0u64, 0u64, 0u64);
            let (mut fresh, mut reord, mut dup, mut unclass) = (0u64, 0u64, 0u64, 0u64);
            for &k in &ks {
                if seen.insert(k) {
                    r_fresh += 1;
                    r_reord += u64::from(max.is_some_and(|m| k < m));
                } else {
                    r_dup += 1;
                }
                max = max.max(Some(k));
                match t.record(k) {
                    Mark::Fresh => fresh += 1,
                    Mark::Reordered => {
                        fresh += 1;
                        reord += 1
                    }
                    Mark::Duplicate => dup += 1,
                    Mark::Unclassified => {
                        dup += 1;
                        unclass += 1
                    }
                }
            }
            assert_eq!(fresh + dup, r_fresh + r_dup);
            assert_eq!(t.distinct, fresh);
            if unclass == 0 {
                // Loss (n − distinct), duplicates and reorders all exact.
                exact += 1;
                assert_eq!(
                    (fresh, reord, dup),
                    (r_fresh, r_reord, r_dup),
                    "round {round}"
                );
            } else {
                // Only after the hole list overflowed, and bounded by the flag.
                assert!(r_fresh - fresh <= unclass && dup - r_dup <= unclass);
                assert!(reord <= r_reord);
            }
        }
        assert!(
            exact >= 10,
            "only {exact} rounds without unclassified arrivals"
        );
    }

    #[test]
    fn expectations_with_holes() {
        let ph = Phase {
            active: true,
            first: 10,
            users: 0,
            end: None,
        };
        assert_eq!(
            ph.expect(0, 20, &[]),
            Expect {
                count: 10,
                last_top: 20
            }
        );
        // 19 and 18 were never used: the last expected is 17.
        assert_eq!(
            ph.expect(0, 20, &[12, 18, 19]),
            Expect {
                count: 7,
                last_top: 18
            }
        );
        // Targeted, 4 users: connection 6 is user 2 and expects 10, 14, 18
        // (class indices 2, 3, 4); 18 unused.
        let ph = Phase { users: 4, ..ph };
        assert_eq!(ph.below(6, 10), 2);
        assert_eq!(
            ph.expect(6, 20, &[17, 18]),
            Expect {
                count: 2,
                last_top: 4
            }
        );
        // Nothing expected at all.
        assert_eq!(
            ph.expect(6, 10, &[]),
            Expect {
                count: 0,
                last_top: 2
            }
        );
    }
}
