//! An output slice that several threads fill at once.

use std::marker::PhantomData;

/// An output slice that several threads write at once, each at indices no
/// other thread writes (their own columns, heads or rows).
pub(crate) struct Disjoint<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(out: &'a mut [T]) -> Self {
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
    pub(crate) unsafe fn set(&self, i: usize, value: T) {
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
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [T] {
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
// element; the elements themselves move between threads (`T: Send`).
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
