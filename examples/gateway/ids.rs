//! Ids for responses and requests: a prefix and 24 base62 characters.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// `prefix` followed by 24 base62 characters, unique in this process and hard to
/// guess across processes. Ids are not secrets: a keyed hash of a counter will do.
pub(crate) fn new_id(prefix: &str) -> String {
    const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let keys = KEYS.get_or_init(RandomState::new);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Eight base62 digits use 48 of a word's 64 bits, so every digit is uniform
    // enough; three words give the 24.
    let mut words = [0u8, 1, 2].map(|lane| keys.hash_one((count, lane)));

    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    for index in 0..24 {
        let word = &mut words[index / 8];
        id.push(char::from(BASE62[(*word % 62) as usize]));
        *word /= 62;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::new_id;

    #[test]
    fn ids_carry_the_prefix_and_differ() {
        let first = new_id("msg_");
        assert_eq!(first.len(), 28);
        assert!(first.starts_with("msg_"));
        assert_ne!(first, new_id("msg_"));
        assert!(first[4..].bytes().all(|byte| byte.is_ascii_alphanumeric()));
    }
}
