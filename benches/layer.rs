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
//! - `layer/…`: the same inner service behind `ApiKeyLayer`, over a memory store or
//!   a `CachedKeyStore` around it (every lookup a hit).
//! - `layer/memory-without-record-use/…`: the memory store with its last-use
//!   note switched off, to price that note.
//! - `verifier/…`: `Verifier::verify` of the key text alone, without HTTP: where
//!   the layer's time goes between headers and verification.
//! - `moka_get`: one `get` of a `moka::sync::Cache` holding the same 10 000
//!   records with per-entry expiry, as `CachedKeyStore` keeps them.
//!
//! - `parts/…`: single steps the layer takes beyond the floor, timed alone.
//!
//! Added cost = `layer/…` − `bare`; the target is added ≤ 1.5 × floor. Each
//! iteration builds its request (a clone of thirteen headers, as a server parses a
//! fresh map per request), calls the service and drops the response, in the baseline
//! as behind the layer, so the difference is the layer's alone. Building requests
//! in batches outside the timed loop instead (`iter_batched`) leaves them cold in
//! the CPU caches by the time they are used, and charges those misses to whoever
//! reads the most headers.
//!
//! Run: `cargo bench --all-features --bench layer -- --warm-up-time 1 --measurement-time 3`

// `criterion_group!` makes a public function that cannot carry a doc comment.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use crossmodel_auth::header::{ANTHROPIC_VERSION, X_API_KEY};
use crossmodel_auth::{
    ApiKeyLayer, CachedKeyStore, Envelope, JsonEnvelope, KeyFormat, KeyId, KeyRecord,
    RenderRejection, Verifier,
};
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

    let cached = CachedKeyStore::new(public.store.clone());
    support::warm(&cached, &[id]);
    let mut layered_cached = ApiKeyLayer::new(cached).layer(ok_service());
    assert_eq!(
        drive(layered_cached.call(request(&headers)))
            .unwrap()
            .status(),
        200
    );
    let moka = support::moka_like_the_cache(&public.records);

    let mut layered_unrecorded =
        ApiKeyLayer::new(support::NoUseRecording(public.store.clone())).layer(ok_service());
    let verifier = Verifier::new(public.store.clone());
    let key = public.key(index).to_owned();

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
        b.iter(|| drive(bare.call(request(&headers))));
    });
    group.bench_function("layer/memory/public", |b| {
        b.iter(|| drive(layered.call(request(&headers))));
    });
    group.bench_function("layer/memory-without-record-use/public", |b| {
        b.iter(|| drive(layered_unrecorded.call(request(&headers))));
    });
    group.bench_function("verifier/memory/public", |b| {
        b.iter(|| drive(verifier.verify(black_box(&key))).unwrap());
    });
    group.bench_function("moka_get", |b| {
        b.iter(|| black_box(moka.get(black_box(&id))));
    });
    group.bench_function("layer/cache/public", |b| {
        b.iter(|| drive(layered_cached.call(request(&headers))));
    });
    group.bench_function("layer/memory/signed", |b| {
        b.iter(|| drive(layered_signed.call(request(&signed_headers))));
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
            b.iter(|| drive(bare.call(request(headers))));
        });
        group.bench_function(format!("layer/{name}"), |b| {
            b.iter(|| drive(layered.call(request(headers))));
        });
    }
    group.finish();
}

/// Single steps of the layer, timed alone with public APIs, to price what the
/// layer does beyond the floor.
fn parts(c: &mut Criterion) {
    let keys = KeySet::new(1, &KeyFormat::public());
    let key = keys.key(0).to_owned();
    let headers = support::headers_with_bearer(&key);
    let format = KeyFormat::public();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rejection = runtime
        .block_on(Verifier::new(keys.store.clone()).verify("cm-not-a-key"))
        .unwrap_err();

    let mut group = c.benchmark_group("parts");
    group.bench_function("envelope_probe", |b| {
        b.iter(|| {
            let headers = black_box(&headers);
            headers.contains_key(ANTHROPIC_VERSION)
                || headers
                    .get_all(X_API_KEY)
                    .iter()
                    .any(|value| !value.is_empty())
        });
    });
    group.bench_function("system_time_now", |b| {
        b.iter(std::time::SystemTime::now);
    });
    group.bench_function("clone_headers", |b| {
        b.iter(|| black_box(&headers).clone());
    });
    group.bench_function("clone_headers_and_strip", |b| {
        b.iter(|| {
            let mut headers = black_box(&headers).clone();
            headers.remove(AUTHORIZATION);
            headers.remove(X_API_KEY);
            headers
        });
    });
    group.bench_function("parse_public_checksum", |b| {
        b.iter(|| format.parse(black_box(&key)).unwrap().id());
    });
    group.bench_function("render_openai_body", |b| {
        b.iter(|| {
            JsonEnvelope.render(
                black_box(&rejection),
                Envelope::OpenAi,
                "req_0123456789abcdefghijklmn",
            )
        });
    });
    group.finish();
}

criterion_group!(benches, fast_path, rejections, parts);
criterion_main!(benches);
