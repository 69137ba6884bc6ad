//! The provided-buffer ring: a pool of receive buffers the kernel picks from
//! when data arrives, so an idle connection holds no buffer at all.
//!
//! Layout (io_uring_register_buf_ring(3)): a page-aligned array of 16-byte
//! `io_uring_buf` entries; `bid` is the buffer's index in our data area; the
//! tail is published with a release store into entry 0's `resv` field.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

pub(crate) struct BufRing {
    entries_ptr: *mut BufRingEntry,
    entries_bytes: usize,
    data_ptr: *mut u8,
    data_bytes: usize,
    entry_count: u16,
    buffer_bytes: u32,
    tail: u16,
    pub(crate) group_id: u16,
}

fn map_anonymous(bytes: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping has no preconditions; the result
    // is checked for MAP_FAILED. MAP_POPULATE faults the pages in now, so the
    // pool shows in RSS from start-up instead of growing as connections come.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

impl BufRing {
    /// `entry_count` must be a power of two ≤ 32768 (kernel limit).
    pub(crate) fn new(
        ring: &IoUring,
        group_id: u16,
        entry_count: u16,
        buffer_bytes: u32,
    ) -> io::Result<BufRing> {
        assert!(entry_count.is_power_of_two() && entry_count <= 32768);
        assert!(buffer_bytes > 0);
        let entries_bytes = entry_count as usize * std::mem::size_of::<BufRingEntry>();
        let data_bytes = entry_count as usize * buffer_bytes as usize;
        let entries_ptr = map_anonymous(entries_bytes)?.cast::<BufRingEntry>();
        let data_ptr = match map_anonymous(data_bytes) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: entries_ptr was mapped just above with this length.
                unsafe { libc::munmap(entries_ptr.cast(), entries_bytes) };
                return Err(e);
            }
        };
        let mut this = BufRing {
            entries_ptr,
            entries_bytes,
            data_ptr,
            data_bytes,
            entry_count,
            buffer_bytes,
            tail: 0,
            group_id,
        };
        // SAFETY: the entry array is page aligned (mmap), entry_count long,
        // and lives until Drop, which runs after the ring that uses it is
        // gone (the shard drops its ring first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries_ptr as u64,
                entry_count,
                group_id,
                0,
            )?;
        }
        for bid in 0..entry_count {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The received bytes of buffer `bid`. The kernel wrote them and will not
    /// touch the buffer again until we give it back with `recycle`.
    pub(crate) fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        assert!(bid < self.entry_count && len <= self.buffer_bytes as usize);
        // SAFETY: bid is in range, so the slice lies inside the data mapping;
        // the kernel handed this buffer to us (it is out of the ring) and we
        // hold &mut self, so no other slice of it exists.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data_ptr.add(bid as usize * self.buffer_bytes as usize),
                len,
            )
        }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entry_count - 1;
        let idx = (self.tail & mask) as usize;
        // SAFETY: idx < entry_count; the slot at the tail is not visible to
        // the kernel until the tail is published.
        let entry = unsafe { &mut *self.entries_ptr.add(idx) };
        entry.set_addr(self.data_ptr as u64 + bid as u64 * self.buffer_bytes as u64);
        entry.set_len(self.buffer_bytes);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's `resv` (a u16); the
        // kernel reads it with an acquire load, so a release store makes the
        // entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.entries_ptr) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.entry_count);
        self.push(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths and
        // nothing refers to them any more (the ring was dropped before us).
        unsafe {
            libc::munmap(self.entries_ptr.cast(), self.entries_bytes);
            libc::munmap(self.data_ptr.cast(), self.data_bytes);
        }
    }
}
