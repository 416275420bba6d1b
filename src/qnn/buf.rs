//! A zero-initialised byte buffer aligned to 64 bytes (a cache line), for packed weights and
//! kernel scratch. Some hand-written kernels (tract-linalg's among them) load their operands
//! with alignment-hinted instructions; 64 bytes satisfies every one of them.
//!
//! Must not: hand out memory beyond its length.

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A byte buffer whose start is 64-byte aligned.
#[derive(Clone)]
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    /// An empty buffer (no allocation).
    pub const fn empty() -> Self {
        AlignedBuf {
            lines: Vec::new(),
            len: 0,
        }
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        AlignedBuf {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    /// Grow (zero-filled) to at least `len` bytes; never shrinks.
    pub fn ensure(&mut self, len: usize) {
        if len > self.len {
            self.lines.resize(len.div_ceil(64), Line([0; 64]));
            self.len = len;
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `Line` is `repr(C)` around `[u8; 64]` (size 64, no padding), so the vector's
        // storage is `lines.len() * 64` initialised bytes, and `len <= lines.len() * 64` is
        // kept by `zeroed` and `ensure`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_growable() {
        let mut b = AlignedBuf::zeroed(100);
        assert_eq!(b.len(), 100);
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        assert!(b.as_slice().iter().all(|&v| v == 0));
        b.as_mut_slice()[99] = 7;
        b.ensure(300);
        assert_eq!(b.len(), 300);
        assert_eq!(b.as_slice()[99], 7);
        assert!(b.as_slice()[100..].iter().all(|&v| v == 0));
        b.ensure(10);
        assert_eq!(b.len(), 300, "never shrinks");
    }
}
