//! The heap a shard's permessage-deflate codec holds: one compressor and
//! one decompressor per shard (never per connection), measured with a
//! counting allocator around their creation and first use.
//!
//! `cargo test --release --test deflate_memory -- --nocapture` prints the
//! figures the README quotes.

use pushgate::ws::deflate::{Deflater, Inflater};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// Live heap bytes of this test binary.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to the system allocator with the same
// arguments; the counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's layout, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap `make` leaves behind (what it returns keeps alive).
fn held<T>(make: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE_BYTES.load(Relaxed);
    let value = make();
    (value, LIVE_BYTES.load(Relaxed) - before)
}

#[test]
fn a_shards_codec_is_a_few_hundred_kb_once() {
    // A 2 KB JSON message, as in the bench.
    let message: Vec<u8> = (0..40)
        .flat_map(|i| format!(r#"{{"id":{i},"name":"user-{i}","online":true}},"#).into_bytes())
        .collect();
    let (mut deflater, deflater_bytes) = held(|| {
        let mut d = Deflater::default();
        let mut out = Vec::new();
        d.compress(&[&message], &mut out);
        d
    });
    let mut compressed = Vec::new();
    deflater.compress(&[&message], &mut compressed);
    let (inflater, inflater_bytes) = held(|| {
        let mut i = Inflater::default();
        i.inflate(&compressed, 1 << 20, |_| Ok(())).unwrap();
        i
    });
    println!(
        "per shard: compressor {deflater_bytes} bytes, decompressor {inflater_bytes} bytes \
         (its 16 KiB output chunk included)"
    );
    // Once per shard: fine. Per connection (as with context takeover) it
    // would be out of the question at a million connections.
    assert!(deflater_bytes < 512 * 1024, "{deflater_bytes}");
    assert!(inflater_bytes < 128 * 1024, "{inflater_bytes}");
    // What compressing a push costs (once per push per shard), not asserted.
    let started = std::time::Instant::now();
    let rounds = 1000;
    for _ in 0..rounds {
        compressed.clear();
        deflater.compress(&[&message], &mut compressed);
    }
    println!(
        "compressing {} bytes of JSON: {:.1} µs each",
        message.len(),
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
    drop((deflater, inflater));
}
