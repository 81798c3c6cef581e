//! The metrics recorder does not keep histogram samples for a scrape that may
//! never come. (Found with the scale rehearsal: a pod nobody scrapes grew by
//! every sample it recorded, three per Redis call.) A counting allocator tells
//! the bytes live in this process; 200,000 samples take megabytes until they
//! are folded into the buckets, which must happen within a few upkeep periods
//! without any `/metrics` request, while samples keep coming as on a live pod.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn histogram_samples_are_folded_without_a_scrape() {
    const SAMPLES: u64 = 200_000;
    let _handle = herald::metrics::install();
    herald::metrics::redis_roundtrip("upkeep-test", Duration::from_micros(1));
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..SAMPLES {
        herald::metrics::redis_roundtrip("upkeep-test", Duration::from_micros(i % 5_000));
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    // What the test measures: the samples are held until folded (unless an
    // upkeep ran in the middle of the loop, which folds some of them).
    assert!(
        held > 200_000,
        "{SAMPLES} samples hold only {held} B: nothing to measure"
    );
    let bound = before + 256 * 1024;
    let deadline = Instant::now() + herald::metrics::UPKEEP * 3;
    let mut live = LIVE.load(Ordering::Relaxed);
    // As on a live pod, samples keep coming (a few a second): the folded
    // blocks are freed as the recording threads move the epoch on
    // (crossbeam-epoch).
    while live > bound && Instant::now() < deadline {
        for i in 0..20 {
            herald::metrics::redis_roundtrip("upkeep-test", Duration::from_micros(i));
        }
        std::thread::sleep(Duration::from_millis(100));
        live = LIVE.load(Ordering::Relaxed);
    }
    assert!(
        live <= bound,
        "{SAMPLES} histogram samples still hold {} B after {:?} without a scrape \
         (held {held} B right after recording)",
        live - before,
        herald::metrics::UPKEEP * 3
    );
}
