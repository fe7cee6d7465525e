//! A first-fit allocator of fixed-size units, for the pages and bounce buffers carved out of
//! the DMA region. Small (a few thousand units) and linear: the driver allocates rarely.

/// Tracks which units of a region are in use.
#[derive(Debug)]
pub struct UnitAllocator {
    used: Vec<bool>,
}

impl UnitAllocator {
    /// An allocator of `units` free units.
    pub fn new(units: usize) -> Self {
        UnitAllocator {
            used: vec![false; units],
        }
    }

    /// Allocates `count` contiguous units whose first index is a multiple of `align`
    /// (`align` 0 is treated as 1); returns the first index.
    pub fn alloc(&mut self, count: usize, align: usize) -> Option<usize> {
        if count == 0 {
            return None;
        }
        let align = align.max(1);
        let mut start: usize = 0;
        while let Some(end) = start.checked_add(count) {
            let window = self.used.get(start..end)?;
            match window.iter().rposition(|u| *u) {
                // Restart after the last used unit of the window, rounded up to `align`.
                Some(busy) => {
                    start = start
                        .checked_add(busy + 1)?
                        .checked_next_multiple_of(align)?;
                }
                None => {
                    self.used[start..end].fill(true);
                    return Some(start);
                }
            }
        }
        None
    }

    /// Frees `count` units from `start`; `false` (and nothing freed) unless all were in use.
    pub fn free(&mut self, start: usize, count: usize) -> bool {
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        match self.used.get_mut(start..end) {
            Some(w) if count > 0 && w.iter().all(|u| *u) => {
                w.fill(false);
                true
            }
            _ => false,
        }
    }

    /// Units currently in use.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_alignment() {
        let mut a = UnitAllocator::new(8);
        assert_eq!(a.alloc(1, 1), Some(0));
        assert_eq!(a.alloc(2, 2), Some(2));
        assert_eq!(a.alloc(1, 1), Some(1));
        assert_eq!(a.alloc(4, 4), Some(4));
        assert_eq!(a.alloc(1, 1), None);
        assert_eq!(a.in_use(), 8);
    }

    #[test]
    fn free_then_reuse() {
        let mut a = UnitAllocator::new(4);
        assert_eq!(a.alloc(4, 1), Some(0));
        assert!(a.free(1, 2));
        assert!(!a.free(1, 1), "double free refused");
        assert!(!a.free(3, 2), "out of range refused");
        assert!(!a.free(0, 0));
        assert_eq!(a.alloc(3, 1), None);
        assert_eq!(a.alloc(2, 1), Some(1));
        assert_eq!(a.in_use(), 4);
    }

    #[test]
    fn refuses_empty_and_oversized() {
        let mut a = UnitAllocator::new(4);
        assert_eq!(a.alloc(0, 1), None);
        assert_eq!(a.alloc(5, 1), None);
        assert_eq!(a.alloc(usize::MAX, 1), None);
        assert_eq!(a.alloc(1, 0), Some(0));
        assert_eq!(a.alloc(1, usize::MAX), None);
    }
}
