//! Free-chunk allocator: one bit per physical data chunk (set = in use:
//! owned by a layer, being written, or freed by a commit not yet durable).
//! Next-fit from a cursor so consecutive allocations are mostly sequential.
//! The bitmap is not stored on disk: open derives it from the layer maps.

/// Bitmap allocator over physical chunks `0..total`.
#[derive(Debug, Default)]
pub struct Allocator {
    words: Vec<u64>,
    total: u64,
    free: u64,
    cursor: u64,
}

impl Allocator {
    /// `total` chunks, all free.
    pub fn new(total: u64) -> Self {
        let mut a = Self::default();
        a.grow(total);
        a
    }

    /// Adds chunks `self.total..total` as free (no-op when not larger).
    pub fn grow(&mut self, total: u64) {
        if total <= self.total {
            return;
        }
        let words = usize::try_from(total.div_ceil(64)).unwrap_or(usize::MAX);
        self.words.resize(words, 0);
        self.free = self.free.saturating_add(total - self.total);
        self.total = total;
    }

    /// Physical chunks managed.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Chunks free now.
    pub fn free_count(&self) -> u64 {
        self.free
    }

    fn bit(&self, p: u64) -> Option<(usize, u64)> {
        if p >= self.total {
            return None;
        }
        Some((usize::try_from(p / 64).ok()?, 1u64 << (p % 64)))
    }

    /// True when `p` is in use (or out of range).
    pub fn is_used(&self, p: u64) -> bool {
        match self.bit(p) {
            Some((w, m)) => self.words.get(w).is_none_or(|word| word & m != 0),
            None => true,
        }
    }

    /// Marks `p` used; false when it was already used or is out of range.
    pub fn mark_used(&mut self, p: u64) -> bool {
        let Some((w, m)) = self.bit(p) else {
            return false;
        };
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        if *word & m != 0 {
            return false;
        }
        *word |= m;
        self.free = self.free.saturating_sub(1);
        true
    }

    /// Frees `p`; false when it was already free or is out of range.
    pub fn release(&mut self, p: u64) -> bool {
        let Some((w, m)) = self.bit(p) else {
            return false;
        };
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        if *word & m == 0 {
            return false;
        }
        *word &= !m;
        self.free = self.free.saturating_add(1);
        true
    }

    /// Takes a free chunk, next-fit from the cursor.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free == 0 || self.words.is_empty() {
            return None;
        }
        let n = self.words.len();
        let start = usize::try_from(self.cursor / 64).unwrap_or(0) % n;
        for i in 0..n {
            let w = (start + i) % n;
            let word = *self.words.get(w)?;
            if word == u64::MAX {
                continue;
            }
            let bit = u64::from((!word).trailing_zeros());
            let p = (w as u64) * 64 + bit;
            if p >= self.total {
                continue;
            }
            if self.mark_used(p) {
                self.cursor = p + 1;
                return Some(p);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_chunk_once_then_runs_out() {
        let mut a = Allocator::new(130);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(p) = a.alloc() {
            assert!(seen.insert(p), "chunk {p} handed out twice");
        }
        assert_eq!(seen.len(), 130);
        assert_eq!(a.free_count(), 0);
        assert!(a.release(77));
        assert!(!a.release(77), "double free is refused");
        assert_eq!(a.alloc(), Some(77));
        assert!(!a.mark_used(500), "out of range");
    }

    #[test]
    fn grow_adds_free_chunks() {
        let mut a = Allocator::new(10);
        for _ in 0..10 {
            a.alloc();
        }
        a.grow(100);
        assert_eq!(a.free_count(), 90);
        assert!(a.alloc().is_some_and(|p| p >= 10));
    }
}
