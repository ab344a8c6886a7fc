//! Whole-request cost as the key table grows: 1 000 against 1 000 000 keys, each
//! request presenting a key drawn at random from the whole set, so the larger
//! table is read from memory, not from the CPU caches. Target: the larger table
//! costs at most 1.5 × the smaller.
//!
//! Each iteration draws a key, builds its request (thirteen headers) and calls the
//! service; `bare/…` does the same without the layer, so `layer − bare` is the
//! layer's share at each size. `floor/…` builds the same request and runs the
//! hand-written floor of `benches/layer.rs` against a `HashMap` of the same size:
//! what any check pays for the larger table.
//!
//! Run: `cargo bench --all-features --bench scale -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` makes a public function that cannot carry a doc comment.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use crossmodel_auth::{ApiKeyLayer, CachedKeyStore, KeyFormat, KeyId, KeyRecord};
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

mod support;

use support::{Draw, KeySet, drive, ok_service, request};

const SIZES: [(usize, &str); 2] = [(1_000, "1k"), (1_000_000, "1M")];

/// A request for a key drawn at random, its headers built from a template.
fn random_request(keys: &KeySet, draw: &mut Draw, template: &mut HeaderMap) -> http::Request<()> {
    let key = keys.key(draw.below(keys.len()));
    let mut value = [0u8; 7 + crossmodel_auth::key::KEY_LEN];
    value[..7].copy_from_slice(b"Bearer ");
    value[7..].copy_from_slice(key.as_bytes());
    template.insert(AUTHORIZATION, HeaderValue::from_bytes(&value).unwrap());
    request(template)
}

/// The hand-written floor of `benches/layer.rs`, for a key drawn at random: the
/// table it reads scales with the set as the layer's store does.
fn floor(headers: &HeaderMap, table: &HashMap<KeyId, Arc<KeyRecord>>) -> http::Extensions {
    let value = headers.get(AUTHORIZATION).unwrap().as_bytes();
    let key = value.strip_prefix(b"Bearer ").unwrap();
    let digest = Sha256::digest(&key[support::SECRET_RANGE]);

    let id = KeyId::parse(std::str::from_utf8(&key[3..15]).unwrap()).unwrap();
    let record = table.get(&id).unwrap();
    let matches: bool = record.digest.as_bytes()[..].ct_eq(&digest[..]).into();
    assert!(matches);

    let mut extensions = http::Extensions::new();
    extensions.insert(Arc::clone(record));
    extensions
}

fn sizes(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");

    for (size, label) in SIZES {
        let keys = KeySet::new(size, &KeyFormat::public());
        let ids: Vec<KeyId> = keys.records.iter().map(|record| record.id).collect();
        let cached = CachedKeyStore::new(keys.store.clone()).capacity(size as u64);
        support::warm(&cached, &ids);

        let table: HashMap<KeyId, Arc<KeyRecord>> = keys
            .records
            .iter()
            .map(|record| (record.id, Arc::clone(record)))
            .collect();

        let mut bare = ok_service();
        let mut memory = ApiKeyLayer::new(keys.store.clone()).layer(ok_service());
        let mut cache = ApiKeyLayer::new(cached).layer(ok_service());
        let mut template = support::sdk_headers();
        let mut draw = Draw::new();
        for _ in 0..1_000 {
            let response = drive(cache.call(random_request(&keys, &mut draw, &mut template)));
            assert_eq!(response.unwrap().status(), 200, "every key must be cached");
        }

        group.bench_function(format!("floor/{label}"), |b| {
            b.iter(|| {
                let request = random_request(&keys, &mut draw, &mut template);
                drop(black_box(floor(request.headers(), &table)));
            });
        });
        group.bench_function(format!("bare/{label}"), |b| {
            b.iter(|| drive(bare.call(random_request(&keys, &mut draw, &mut template))));
        });
        group.bench_function(format!("layer/memory/{label}"), |b| {
            b.iter(|| drive(memory.call(random_request(&keys, &mut draw, &mut template))));
        });
        group.bench_function(format!("layer/cache/{label}"), |b| {
            b.iter(|| drive(cache.call(random_request(&keys, &mut draw, &mut template))));
        });
    }
    group.finish();
}

criterion_group!(benches, sizes);
criterion_main!(benches);
