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

    #[allow(unsafe_code)]
    pub(crate) fn set(&self, i: usize, value: f32) {
        assert!(i < self.len, "output index {i} of {}", self.len);
        // SAFETY: `i` is in bounds (checked above) of a slice borrowed
        // mutably for `'a`; every task writes only its own columns, so no two
        // threads touch the same element, and nothing reads it until
        // `Pool::run` has returned.
        unsafe { *self.ptr.add(i) = value };
    }

    /// `len` elements from `start`, for a task that owns them.
    #[allow(unsafe_code, clippy::mut_from_ref)]
    pub(crate) fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "output range {start}+{len} of {}",
            self.len
        );
        // SAFETY: in bounds (checked above) of a slice borrowed mutably for
        // `'a`; each task asks only for its own range, which no other task
        // asks for, and nothing reads the slice until `Pool::run` returned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

// SAFETY: see `Disjoint::set`: the writes of different threads never overlap.
#[allow(unsafe_code)]
unsafe impl Sync for Disjoint<'_> {}
#[allow(unsafe_code)]
unsafe impl Send for Disjoint<'_> {}
