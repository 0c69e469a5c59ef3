//! Tables the network can grow (one entry per peer or source address that asks): kept to a limit by
//! forgetting the entry touched longest ago.

use std::collections::HashMap;
use std::hash::Hash;

/// Makes room for one more entry in `map` (at most `limit` entries): if it is full, the entry whose time
/// `at` is oldest goes.
pub fn make_room<K: Eq + Hash + Copy, V>(map: &mut HashMap<K, V>, limit: usize, at: impl Fn(&V) -> u64) {
    if map.len() >= limit {
        if let Some(oldest) = map.iter().min_by_key(|(_, v)| at(v)).map(|(k, _)| *k) {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let mut map: HashMap<[u8; 32], u64> = (0..3u8).map(|i| ([i; 32], 10 - u64::from(i))).collect();
        make_room(&mut map, 4, |&at| at);
        assert_eq!(map.len(), 3);
        make_room(&mut map, 3, |&at| at);
        assert!(map.len() == 2 && !map.contains_key(&[2; 32]));
    }
}
