//! One bit per connection index, kept beside the 16-byte slots for what
//! few devices are (a sleeping console, an SSE stream): a bitmap grows
//! only to set a bit, so it costs nothing on a shard where no device is.

#[derive(Default)]
pub(super) struct Bits(Vec<u64>);

impl Bits {
    pub(super) fn get(&self, index: usize) -> bool {
        self.0
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Sets or clears a bit; the bitmap grows only to set one.
    pub(super) fn set(&mut self, index: usize, on: bool) {
        let (word, mask) = (index / 64, 1u64 << (index % 64));
        if word >= self.0.len() {
            if !on {
                return;
            }
            self.0.resize(word + 1, 0);
        }
        if on {
            self.0[word] |= mask;
        } else {
            self.0[word] &= !mask;
        }
    }

    /// Keeps indexes below `indexes` (every bit past them must be clear),
    /// and room for twice that.
    pub(super) fn truncate(&mut self, indexes: usize) {
        let words = indexes.div_ceil(64);
        debug_assert!(self.0.iter().skip(words).all(|&w| w == 0));
        self.0.truncate(words);
        self.0.shrink_to(words * 2);
    }

    /// (words, capacity): what the bitmap holds.
    #[cfg(test)]
    pub(super) fn footprint(&self) -> (usize, usize) {
        (self.0.len(), self.0.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_grow_only_to_set_and_truncate_gives_words_back() {
        let mut b = Bits::default();
        b.set(1000, false);
        assert_eq!(b.footprint().0, 0, "clearing allocates nothing");
        b.set(3, true);
        b.set(700, true);
        assert!(b.get(3) && b.get(700) && !b.get(4) && !b.get(1 << 20));
        b.set(700, false);
        b.truncate(64);
        assert_eq!(b.footprint().0, 1);
        assert!(b.get(3));
    }
}
