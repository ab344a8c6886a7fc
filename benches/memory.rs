//! Heap bytes per key held by the memory store and by `CachedKeyStore`, counted by
//! a global allocator. Target: at most 256 B per cached key beyond the record's own
//! strings.
//!
//! - Memory store: records are built first (their name and user id strings are
//!   the record's own), then counted while `insert` takes them: the `Arc` around
//!   each record, the table slots, the creation-order list and the per-user entry.
//! - Cache: the records already live in the inner store and the cache shares them
//!   (`Arc`), so everything counted while it fills is the cache's own: moka's entry,
//!   its indexes and expiry timers.
//!
//! - Bare moka caches of the same records, one with per-entry expiry (what the
//!   cache uses, so found and unknown ids can live for different times) and one
//!   with a single TTL: what the per-entry timers cost.
//!
//! Net bytes = allocated − freed, growth included. Table sizes double, so per-key
//! figures move with where a size falls between two powers of two; both sizes show
//! the spread.
//!
//! Run: `cargo bench --all-features --bench memory`

#![allow(clippy::unwrap_used)]

use std::alloc::System;

use crossmodel_auth::{CachedKeyStore, KeyFormat, KeyId, KeyRecord, KeyStore, MemoryKeyStore};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod support;

#[global_allocator]
static COUNTER: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn net_bytes(region: &Region<'_, System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated
}

fn main() {
    println!("size_of::<KeyRecord>() = {} B", size_of::<KeyRecord>());

    for size in [10_000, 1_000_000] {
        let format = KeyFormat::public();
        let records: Vec<KeyRecord> = (0..size)
            .map(|index| KeyRecord::clone(&support::record_for(&format.generate().unwrap(), index)))
            .collect();
        let ids: Vec<KeyId> = records.iter().map(|record| record.id).collect();

        // The vector's own buffer is freed after counting, not during it.
        let mut records = records.into_iter();
        let store = MemoryKeyStore::new();
        let region = Region::new(COUNTER);
        for record in records.by_ref() {
            store.insert(record);
        }
        let memory = net_bytes(&region);
        drop(records);

        let cached = CachedKeyStore::new(store.clone()).capacity(size as u64);
        let region = Region::new(COUNTER);
        support::warm(&cached, &ids);
        let cache = net_bytes(&region);

        let shared: Vec<_> = ids
            .iter()
            .map(|id| cached.get_ref().lookup_now(id).unwrap().unwrap().unwrap())
            .collect();
        let region = Region::new(COUNTER);
        let per_entry_expiry = support::moka_like_the_cache(&shared);
        let moka_expiry = net_bytes(&region);
        let region = Region::new(COUNTER);
        let one_ttl = support::moka_with_one_ttl(&shared);
        let moka_ttl = net_bytes(&region);

        let per_key = |bytes: isize| bytes / size as isize;
        println!(
            "{size:>9} keys: memory store {:>4} B/key | CachedKeyStore {:>4} B/key | \
             bare moka, per-entry expiry {:>4} B/key, one TTL {:>4} B/key",
            per_key(memory),
            per_key(cache),
            per_key(moka_expiry),
            per_key(moka_ttl),
        );
        drop((per_entry_expiry, one_ttl));
    }
}
