//! A bounded map for the per-worker token caches: when full, the oldest inserted key is
//! evicted (FIFO, O(1)). Keys are already uniform hashes, so they index the table as they
//! are.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The key is already a uniform hash: take it as is (no per-process random seed needed,
/// which also avoids a WASI `random_get` call).
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// At most `max` entries (`max == 0`: none are kept).
pub struct FifoMap<K, V> {
    max: usize,
    map: HashMap<K, V, BuildHasherDefault<PassThroughHasher>>,
    order: VecDeque<K>,
}

impl<K: Copy + Eq + Hash, V> FifoMap<K, V> {
    pub fn new(max: usize) -> Self {
        FifoMap {
            max,
            map: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// The bound given to [`FifoMap::new`].
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// A key already present gets the new value and keeps its place in the eviction order.
    pub fn insert(&mut self, key: K, value: V) {
        if self.max == 0 {
            return;
        }
        if let Some(v) = self.map.get_mut(&key) {
            *v = value;
            return;
        }
        while self.map.len() >= self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key, value);
        self.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_insert_goes_first_and_a_replaced_key_keeps_its_place() {
        let mut m = FifoMap::new(2);
        assert_eq!(m.max(), 2);
        m.insert(1u64, "a");
        m.insert(2, "b");
        m.insert(1, "a2");
        assert_eq!(m.get(&1), Some(&"a2"));
        m.insert(3, "c");
        assert_eq!((m.get(&1), m.get(&2), m.len()), (None, Some(&"b"), 2));
        m.clear();
        assert!(m.is_empty());
        let mut off = FifoMap::new(0);
        off.insert(1u64, ());
        assert!(off.is_empty());
    }
}
