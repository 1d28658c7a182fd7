//! A worker's provided-buffer ring: `COUNT` buffers of `SIZE` bytes that the kernel picks from
//! when a multishot `RECV` of a message-mode direction completes, so that a small request
//! costs neither a poll nor a syscall of its own (liburing's `examples/proxy.c` design). A
//! buffer is the direction's from the completion that names it until its bytes were sent on
//! (`give` puts it back at the ring's tail); nothing else writes into it meanwhile.
//!
//! The memory is mapped and touched once when the worker starts (`MAP_POPULATE`): the pool is a
//! fixed cost of the worker, not something that grows with the sessions.

// unsafe: the ring and the buffers are memory the kernel reads and writes.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use rustix::mm::{MapFlags, ProtFlags};

/// Bytes per buffer: a Redis request or reply, or a pipeline of them, in one completion.
pub(super) const SIZE: u32 = 16 * 1024;
/// Buffers per worker (a power of two). A direction holds at most `HOLD_MAX` of them, so
/// `COUNT / HOLD_MAX` directions with stalled readers leave the rest of the pool free; past
/// that, a receive without a buffer (`ENOBUFS`) moves its direction to the pipe path.
pub(super) const COUNT: u16 = 512;
/// Buffers one direction may hold; a direction that reaches it is a stream (its destination
/// takes bytes slower than its source sends them) and moves to the pipe path.
pub(super) const HOLD_MAX: usize = 4;
/// The buffer group id the worker's receives select from.
pub(super) const GROUP: u16 = 0;

/// One mapping of memory, unmapped when dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a new anonymous private mapping, at an address the kernel chooses; nothing else
        // refers to it.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::POPULATE,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the ring that used it is gone (the
        // worker drops its `IoUring` before its `BufRing`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The provided buffers of one worker, registered with its ring as group `GROUP`.
pub(super) struct BufRing {
    entries: Mapping,
    bufs: Mapping,
    /// Our copy of the tail: the next entry to fill.
    tail: u16,
}

// SAFETY (for the ring's lifetime): the worker owns both the ring and this, and drops the ring
// first (field order in `Worker`), so the kernel never touches the memory after it is unmapped.
impl BufRing {
    /// Maps the ring and the buffers, registers them with `ring` and provides every buffer.
    pub(super) fn new(ring: &IoUring) -> io::Result<BufRing> {
        let entries = Mapping::new(usize::from(COUNT) * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(usize::from(COUNT) * SIZE as usize)?;
        // SAFETY: `entries` is page aligned (mmap), holds `COUNT` entries, and lives as long as
        // the ring (see above).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.ptr.as_ptr() as u64,
                COUNT,
                GROUP,
                0,
            )
        }?;
        let mut r = BufRing {
            entries,
            bufs,
            tail: 0,
        };
        for bid in 0..COUNT {
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Where buffer `bid`'s bytes are, for the `SEND` of them.
    pub(super) fn ptr(&self, bid: u16) -> *const u8 {
        debug_assert!(bid < COUNT);
        // SAFETY: in bounds: `bid < COUNT` buffers of `SIZE` bytes were mapped.
        unsafe { self.bufs.ptr.as_ptr().add(usize::from(bid) * SIZE as usize) }
    }

    /// Gives buffer `bid` back to the kernel (its bytes were sent, or its session ended).
    pub(super) fn give(&mut self, bid: u16) {
        self.put(bid);
        self.publish();
    }

    fn put(&mut self, bid: u16) {
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        let i = usize::from(self.tail & (COUNT - 1));
        // SAFETY: `i < COUNT` entries were mapped; the kernel reads an entry only once the tail
        // published in `publish` covers it, and this one is past the published tail.
        let e = unsafe { &mut *base.add(i) };
        e.set_addr(self.ptr(bid) as u64);
        e.set_len(SIZE);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries put so far visible to the kernel.
    fn publish(&self) {
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: the tail is the `resv` field of the first entry, inside the mapping, 2-byte
        // aligned, and the kernel only reads it; the release store orders the entries before it.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}
