//! What `ApiKeyLayer` adds to a request, beside the floor it cannot go under.
//!
//! Every group runs its baselines in the same process and the same run:
//!
//! - `floor`: the work any API-key check must do, written by hand — find
//!   `authorization` among thirteen headers, strip `Bearer `, SHA-256 of the 22-byte
//!   secret, a `HashMap` hit among 10 000 keys, a 32-byte constant-time compare, and
//!   one `Extensions::insert` of an `Arc` (the map is dropped too, as the request's
//!   would be).
//! - `bare`: the inner service alone (a ready 200), called directly.
//! - `layer/…`: the same inner service behind `ApiKeyLayer`.
//!
//! Added cost = `layer/…` − `bare`; the target is added ≤ 1.5 × floor. Requests are
//! built outside the measured time (`iter_batched`), and responses dropped outside
//! it; the request is consumed (and dropped) inside, by the inner service, in the
//! baseline as behind the layer.
//!
//! Run: `cargo bench --all-features --bench layer -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` makes a public function that cannot carry a doc comment.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use crossmodel_auth::{ApiKeyLayer, KeyFormat, KeyId, KeyRecord};
use http::header::{AUTHORIZATION, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

mod support;

use support::{KeySet, SECRET_RANGE, drive, ok_service, request};

const KEYS: usize = 10_000;

/// The hand-written floor: each step the layer cannot skip, and nothing else.
fn floor(
    headers: &HeaderMap,
    table: &std::collections::HashMap<KeyId, Arc<KeyRecord>>,
    id: &KeyId,
) -> http::Extensions {
    let value = headers.get(AUTHORIZATION).unwrap().as_bytes();
    let key = value.strip_prefix(b"Bearer ").unwrap();
    let digest = Sha256::digest(&key[SECRET_RANGE]);

    let record = table.get(id).unwrap();
    let matches: bool = record.digest.as_bytes()[..].ct_eq(&digest[..]).into();
    assert!(matches);

    let mut extensions = http::Extensions::new();
    extensions.insert(Arc::clone(record));
    extensions
}

fn fast_path(c: &mut Criterion) {
    let public = KeySet::new(KEYS, &KeyFormat::public());
    let signed_format = support::signed_format();
    let signed = KeySet::new(KEYS, &signed_format);

    let index = KEYS / 2;
    let headers = support::headers_with_bearer(public.key(index));
    let signed_headers = support::headers_with_bearer(signed.key(index));
    let table: std::collections::HashMap<KeyId, Arc<KeyRecord>> = public
        .records
        .iter()
        .map(|record| (record.id, Arc::clone(record)))
        .collect();
    let id = public.records[index].id;

    let mut bare = ok_service();
    let mut layered = ApiKeyLayer::new(public.store.clone()).layer(ok_service());
    let mut layered_signed = ApiKeyLayer::new(signed.store.clone())
        .key_format(signed_format)
        .layer(ok_service());
    assert_eq!(
        drive(layered.call(request(&headers))).unwrap().status(),
        200
    );
    assert_eq!(
        drive(layered_signed.call(request(&signed_headers)))
            .unwrap()
            .status(),
        200
    );

    let mut group = c.benchmark_group("fast_path");
    group.bench_function("floor", |b| {
        b.iter(|| {
            drop(black_box(floor(
                black_box(&headers),
                &table,
                black_box(&id),
            )))
        });
    });
    group.bench_function("bare", |b| {
        b.iter_batched(
            || request(&headers),
            |request| drive(bare.call(request)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("layer/memory/public", |b| {
        b.iter_batched(
            || request(&headers),
            |request| drive(layered.call(request)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("layer/memory/signed", |b| {
        b.iter_batched(
            || request(&signed_headers),
            |request| drive(layered_signed.call(request)),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn rejections(c: &mut Criterion) {
    let keys = KeySet::new(KEYS, &KeyFormat::public());
    let valid = keys.key(0).to_owned();

    let cases = [
        ("missing", support::sdk_headers()),
        ("malformed", support::headers_with_bearer("cm-not-a-key")),
        (
            "checksum",
            support::headers_with_bearer(&support::with_bad_checksum(&valid)),
        ),
    ];

    let mut bare = ok_service();
    let mut layered = ApiKeyLayer::new(keys.store.clone()).layer(ok_service());

    let mut group = c.benchmark_group("rejections");
    for (name, headers) in &cases {
        assert_eq!(drive(layered.call(request(headers))).unwrap().status(), 401);

        group.bench_function(format!("bare/{name}"), |b| {
            b.iter_batched(
                || request(headers),
                |request| drive(bare.call(request)),
                BatchSize::SmallInput,
            );
        });
        group.bench_function(format!("layer/{name}"), |b| {
            b.iter_batched(
                || request(headers),
                |request| drive(layered.call(request)),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, fast_path, rejections);
criterion_main!(benches);
