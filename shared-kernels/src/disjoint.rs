//! An output slice that several threads fill at once.

use std::marker::PhantomData;

/// An output slice that several threads write at once, each at indices no
/// other thread writes (their own columns, heads or rows).
pub(crate) struct Disjoint<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

impl<'a> Disjoint<'a> {
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        Disjoint {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// Writes element `i` (bounds-checked).
    ///
    /// # Safety
    /// No other thread may write or read element `i` while the slice is
    /// shared: each task writes only indices that belong to it alone.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn set(&self, i: usize, value: f32) {
        assert!(i < self.len, "output index {i} of {}", self.len);
        // SAFETY: `i` is in bounds (checked above) of a slice borrowed
        // mutably for `'a`, and the caller owns it (see above).
        unsafe { *self.ptr.add(i) = value };
    }

    /// `len` elements from `start` (bounds-checked).
    ///
    /// # Safety
    /// The range must belong to the calling task alone: no other call may
    /// ask for an overlapping range, or touch it, while the slice is shared.
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "output range {start}+{len} of {}",
            self.len
        );
        // SAFETY: in bounds (checked above) of a slice borrowed mutably for
        // `'a`, and the caller owns the range (see above).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

// SAFETY: sharing the pointer is sound because every write goes through
// `set` or `range`, whose callers promise that no two threads touch the same
// element.
#[allow(unsafe_code)]
unsafe impl Sync for Disjoint<'_> {}
#[allow(unsafe_code)]
unsafe impl Send for Disjoint<'_> {}
