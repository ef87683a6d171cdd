//! `PageFrame`: one page-sized buffer, owned by whoever holds it, that goes
//! back to its pool when dropped, on whichever thread drops it.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use super::pool::Shared;

/// A frame while it is not handed out: a pointer to its bytes (a leaked
/// `Box<[u8]>` of the pool's frame size) and the pool it belongs to. Every
/// frame in existence holds one reference to its pool, so moving frames
/// between threads and lists never touches a shared reference count (the
/// pool's `close` breaks the cycle of frames kept in the pool itself). Two
/// words, so moving one is cheap. Dropping a `RawFrame` frees the frame and
/// counts it out of the pool.
pub(crate) struct RawFrame {
    bytes: NonNull<u8>,
    pub(crate) pool: Arc<Shared>,
}

// SAFETY: a `RawFrame` owns its bytes exclusively, like the `Box<[u8]>` it
// was made from, and `Arc<Shared>` is Send + Sync.
unsafe impl Send for RawFrame {}
// SAFETY: as above; `&RawFrame` gives no access to the bytes.
unsafe impl Sync for RawFrame {}

impl RawFrame {
    /// Takes ownership of `bytes` (exactly the pool's frame size) for `pool`.
    pub(crate) fn new(bytes: Box<[u8]>, pool: Arc<Shared>) -> RawFrame {
        assert_eq!(bytes.len(), pool.frame_bytes(), "frame of the wrong size");
        RawFrame {
            bytes: NonNull::from(Box::leak(bytes)).cast::<u8>(),
            pool,
        }
    }
}

impl Drop for RawFrame {
    fn drop(&mut self) {
        let len = self.pool.frame_bytes();
        // SAFETY: `bytes` came from `Box::leak` of a `Box<[u8]>` of
        // `len` bytes (`new`; the pool's frame size never changes), and is
        // dropped exactly once, here.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.bytes.as_ptr(), len))
        });
        self.pool.frame_destroyed();
    }
}

impl fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFrame")
            .field("frame_bytes", &self.pool.frame_bytes())
            .finish_non_exhaustive()
    }
}

/// An owned, page-sized buffer from a [`PageFramePool`](super::PageFramePool)
/// (or from the heap, see [`PageFrame::unpooled`]). Derefs to its bytes.
///
/// A pooled frame returns to its pool when dropped, from any thread: into
/// the dropping thread's cache, so frames handed from thread to thread are
/// fine. Its contents are whatever the last holder left in it (a frame is
/// zeroed only when first allocated): write before you read.
pub struct PageFrame {
    raw: ManuallyDrop<RawFrame>,
    /// Visible length, at most the frame size: `Deref` shows `bytes[..len]`.
    len: usize,
}

impl PageFrame {
    /// A zeroed heap frame of `frame_bytes` that no pool keeps: dropped, it
    /// is freed. What a caller falls back to when a pool is at its cap.
    pub fn unpooled(frame_bytes: usize) -> PageFrame {
        let pool = Shared::new_closed(frame_bytes);
        PageFrame::from_raw(RawFrame::new(
            vec![0u8; frame_bytes].into_boxed_slice(),
            pool,
        ))
    }

    /// Wraps a frame handed out by its pool, at full length.
    #[inline]
    pub(crate) fn from_raw(raw: RawFrame) -> PageFrame {
        PageFrame {
            len: raw.pool.frame_bytes(),
            raw: ManuallyDrop::new(raw),
        }
    }

    /// Unwraps the frame without returning it to its pool.
    pub(crate) fn into_raw(self) -> RawFrame {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        unsafe { ManuallyDrop::take(&mut this.raw) }
    }

    /// The frame's full size in bytes (the pool's frame size).
    pub fn capacity(&self) -> usize {
        self.raw.pool.frame_bytes()
    }

    /// Shortens the visible bytes to `len` (no effect if `len` is not
    /// shorter). The whole frame goes back to the pool on drop.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// True while the frame will go back to a pool when dropped (false for
    /// [`PageFrame::unpooled`] and once its pool is dropped).
    pub fn is_pooled(&self) -> bool {
        !self.raw.pool.is_closed()
    }
}

impl Drop for PageFrame {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `raw` is taken once, here, and `self` is not used after.
        let raw = unsafe { ManuallyDrop::take(&mut self.raw) };
        super::cache::release(raw);
    }
}

impl Deref for PageFrame {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        debug_assert!(self.len <= self.capacity());
        // SAFETY: the frame owns `capacity() >= len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.raw.bytes.as_ptr(), self.len) }
    }
}

impl DerefMut for PageFrame {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.len <= self.capacity());
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.raw.bytes.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PageFrame {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PageFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageFrame")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("pooled", &self.is_pooled())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_unpooled_frame_is_zeroed_and_truncates() {
        let mut frame = PageFrame::unpooled(64);
        assert!(!frame.is_pooled());
        assert_eq!(frame.capacity(), 64);
        assert_eq!(&frame[..], &[0u8; 64][..]);
        frame[3] = 9;
        frame.truncate(10);
        assert_eq!(frame.len(), 10);
        assert_eq!(frame[3], 9);
        frame.truncate(20);
        assert_eq!(frame.len(), 10, "truncate never grows");
        assert_eq!(frame.capacity(), 64);
        let raw = frame.into_raw();
        assert!(raw.pool.is_closed());
    }
}
