//! Does verification time tell an attacker anything? A dudect-style check: two
//! classes of input, drawn at random and interleaved, each run timed alone, then
//! Welch's t-test between the two classes' run times (on the whole distribution and
//! on ~100 crops of its upper tail, the largest |t| reported). |t| above 4.5 means
//! the classes are told apart with high confidence; below it, no difference showed
//! at this sample size.
//!
//! Cases, all over the memory store:
//!
//! - `secret_prefix_verify`: `Verifier::verify` of the same key id with a wrong
//!   secret that shares 21 of 22 characters with the right one, against one that
//!   shares none. Both carry a valid public checksum, so both reach the store and
//!   the comparison, and both have the right one's shape (a digit where it has a
//!   digit, and so on), so only their distance to the right secret differs. This
//!   includes SHA-256 of the secret: what an attacker times.
//! - `digest_prefix_ct_eq`: `KeyDigest::ct_eq` alone, against the stored digest,
//!   of a digest differing only in its last byte and one differing in every byte.
//! - `unknown_vs_known_ct_eq`: the constant-time compare of a wrong digest with
//!   the verifier's dummy digest (unknown id) and with a stored one (known id).
//! - `unknown_vs_known_compare_step`: the same, as `Verifier` does it after a
//!   lookup: pick the stored digest or the dummy from the lookup's answer, compare,
//!   decide. Picking costs one more load for a found record than for the dummy;
//!   this shows whether that is measurable (a lookup's hit or miss differs more).
//! - `unknown_vs_known_verify`: the whole of `Verifier::verify` for checksum-valid
//!   keys with unknown ids against known ids with wrong secrets, ids drawn at
//!   random from two pools of 1000. A map hit and a map miss differ by nature;
//!   key ids are public, so a large |t| here tells nothing secret. It is measured
//!   to show the size of that difference, not to pass a bound.
//! - `same_input_calibration`: the same key in both classes. Its |t| must stay
//!   small; if it does not, the machine or the harness is biased and no other
//!   figure of the run means anything.
//!
//! Run: `cargo bench --all-features --bench timing` (a million samples per class
//! and case, seconds each). `TIMING_SAMPLES=100000` takes fewer; a word after `--`
//! runs only the cases whose name contains it. For steadier figures pin the
//! process to one core: `taskset -c 1 cargo bench …`. `TIMING_CSV=FILE` appends
//! every run time to FILE (dudect-bencher writes class 0 on every line; the lines
//! of a case alternate first class, second class).
//!
//! With wrong secrets whose characters differ in kind (a digit against a letter)
//! and texts at different places in memory, `secret_prefix_verify` reached
//! |t| ≈ 200: parsing takes a little longer or shorter for some presented texts
//! than for others. That depends only on the text the caller sent, never on the
//! stored secret, which is why both texts here have the same shape and placement.

#![allow(clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::sync::Arc;

use crossmodel_auth::key::{KEY_LEN, SECRET_LEN};
use crossmodel_auth::{KeyDigest, KeyFormat, KeyRecord, KeyStore, Verifier};
use dudect_bencher::ctbench::{BenchMetadata, BenchName, BenchOpts, run_benches_console};
use dudect_bencher::rand::RngExt;
use dudect_bencher::{BenchRng, Class, CtRunner};

use support::{KeySet, SECRET_RANGE, drive};

/// Keys in the store of every case.
const STORE_KEYS: usize = 10_000;

/// Size of each pool of ids in `unknown_vs_known_verify`.
const POOL: usize = 1_000;

/// The base62 alphabet of keys: digits, upper case, lower case.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Samples per class: `TIMING_SAMPLES`, else a million.
fn per_class() -> usize {
    std::env::var("TIMING_SAMPLES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000)
}

/// A class for each of `2 × per_class()` samples, drawn at random.
fn classes(rng: &mut BenchRng) -> Vec<Class> {
    (0..2 * per_class())
        .map(|_| {
            if rng.random::<bool>() {
                Class::Left
            } else {
                Class::Right
            }
        })
        .collect()
}

/// `body` (the first 38 characters of a key) with its public checksum: CRC-32
/// (IEEE) of the body as six base62 digits, most significant first.
fn with_public_checksum(body: &[u8]) -> String {
    let mut value = u64::from(crc32fast::hash(body));
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }

    let mut text = body.to_vec();
    text.extend_from_slice(&digits);
    String::from_utf8(text).unwrap()
}

/// Another character of the same kind as `byte` (digit, upper or lower case), so
/// that a changed secret has the same shape: the parser's character checks then
/// take the same branches for both classes.
fn other_char(byte: u8) -> u8 {
    shifted(byte, 1)
}

/// `byte` moved `step` places within its kind (digit, upper or lower case).
fn shifted(byte: u8, step: u8) -> u8 {
    let (first, count) = kind_of(byte);
    first + (byte - first + step % count) % count
}

/// The first character and the size of `byte`'s kind.
fn kind_of(byte: u8) -> (u8, u8) {
    match byte {
        b'0'..=b'9' => (b'0', 10),
        b'A'..=b'Z' => (b'A', 26),
        _ => (b'a', 26),
    }
}

/// Whether two keys have a character of the same kind at every position.
fn same_shape(a: &str, b: &str) -> bool {
    a.bytes()
        .zip(b.bytes())
        .all(|(x, y)| kind_of(x) == kind_of(y))
}

/// A digest alone on a cache line, for the same reason.
#[repr(align(64))]
struct Aligned(KeyDigest);

/// A key text alone on a cache line, so that two texts differ in their bytes
/// only, not in where they sit.
#[repr(align(64))]
struct Line([u8; 64]);

impl Line {
    fn new(text: &str) -> Self {
        let mut line = [0; 64];
        line[..KEY_LEN].copy_from_slice(text.as_bytes());
        Self(line)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0[..KEY_LEN]).unwrap()
    }
}

/// The secret part of a key text.
fn secret_of(text: &str) -> &str {
    &text[SECRET_RANGE]
}

/// `key` with every secret character changed, keeping its kind, and with a
/// checksum of the same shape as `like`'s: the two texts then differ in no
/// character kind at all.
fn far_secret_shaped_like(key: &str, like: &str, rng: &mut BenchRng) -> String {
    loop {
        let mut body = key.as_bytes()[..SECRET_RANGE.end].to_vec();
        for index in SECRET_RANGE {
            body[index] = shifted(body[index], rng.random_range(1..10));
        }
        let text = with_public_checksum(&body);
        if same_shape(&text, like) {
            return text;
        }
    }
}

/// `key` with the secret characters at `positions` changed, re-checksummed.
fn with_secret_changed(key: &str, positions: std::ops::Range<usize>) -> String {
    let mut body = key.as_bytes()[..SECRET_RANGE.end].to_vec();
    for at in positions {
        let index = SECRET_RANGE.start + at;
        body[index] = other_char(body[index]);
    }

    let text = with_public_checksum(&body);
    assert_eq!(text.len(), KEY_LEN);
    assert!(KeyFormat::public().parse(&text).is_ok());
    text
}

/// A verifier over a memory store of `STORE_KEYS` keys.
fn verifier() -> (Verifier<crossmodel_auth::MemoryKeyStore>, KeySet) {
    let keys = KeySet::new(STORE_KEYS, &KeyFormat::public());
    (Verifier::new(keys.store.clone()), keys)
}

/// Times one verification of `text`.
fn time_verify<S: KeyStore>(
    runner: &mut CtRunner,
    verifier: &Verifier<S>,
    class: Class,
    text: &str,
) {
    runner.run_one(class, || drive(verifier.verify(black_box(text))).is_err());
}

fn secret_prefix_verify(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (verifier, keys) = verifier();
    let key = keys.key(0);
    let near = with_secret_changed(key, SECRET_LEN - 1..SECRET_LEN);
    let far = far_secret_shaped_like(key, &near, rng);
    let shared = |text: &str| {
        let (a, b) = (secret_of(text).as_bytes(), secret_of(key).as_bytes());
        a.iter().zip(b).take_while(|(x, y)| x == y).count()
    };
    assert_eq!((shared(&near), shared(&far)), (SECRET_LEN - 1, 0));
    let (near, far) = (Line::new(&near), Line::new(&far));
    for text in [&near, &far] {
        assert!(drive(verifier.verify(text.as_str())).is_err());
    }

    for class in classes(rng) {
        let text = match class {
            Class::Left => &near,
            Class::Right => &far,
        };
        time_verify(runner, &verifier, class, text.as_str());
    }
}

fn secret_prefix_stored(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (verifier, keys) = verifier();
    let presented = Line::new(keys.key(0));
    let right = secret_of(keys.key(0));
    let mut near = right.as_bytes().to_vec();
    near[SECRET_LEN - 1] = other_char(near[SECRET_LEN - 1]);
    let far: Vec<u8> = right.bytes().map(other_char).collect();
    let stored = |secret: &[u8]| KeyRecord {
        digest: KeyDigest::of_secret(std::str::from_utf8(secret).unwrap()),
        ..KeyRecord::clone(&keys.records[0])
    };
    let (near, far) = (stored(&near), stored(&far));

    for class in classes(rng) {
        // Outside the timed part: the same insert for both classes.
        let record = match class {
            Class::Left => &near,
            Class::Right => &far,
        };
        keys.store.insert(record.clone());
        time_verify(runner, &verifier, class, presented.as_str());
    }
}

fn digest_prefix_ct_eq(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (_, keys) = verifier();
    let stored = keys.records[0].digest;
    let mut near = *stored.as_bytes();
    near[31] ^= 1;
    let near = Aligned(KeyDigest::from_bytes(near));
    let far = Aligned(KeyDigest::from_bytes(stored.as_bytes().map(|byte| !byte)));
    let stored = Aligned(stored);

    for class in classes(rng) {
        let presented = match class {
            Class::Left => &near,
            Class::Right => &far,
        };
        runner.run_one(class, || {
            black_box(&stored.0).ct_eq(black_box(&presented.0))
        });
    }
}

/// The comparison step of `Verifier`, after the lookup: the stored digest or the
/// dummy one, the constant-time compare, then the decision.
fn compare_step(
    dummy: &KeyDigest,
    outcome: &Option<Arc<KeyRecord>>,
    presented: &KeyDigest,
) -> bool {
    let stored = outcome.as_ref().map_or(dummy, |record| &record.digest);
    let matches = stored.ct_eq(presented);
    outcome.is_some() && matches
}

fn unknown_vs_known_ct_eq(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (_, keys) = verifier();
    let dummy = Aligned(KeyDigest::of_secret(
        "crossmodel-auth: no key has this secret",
    ));
    let real = Aligned(keys.records[0].digest);
    let wrong = Aligned(KeyDigest::of_secret("a wrong secret of twenty-two"));

    for class in classes(rng) {
        let stored = match class {
            Class::Left => &dummy,
            Class::Right => &real,
        };
        runner.run_one(class, || black_box(&stored.0).ct_eq(black_box(&wrong.0)));
    }
}

fn unknown_vs_known_compare_step(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (_, keys) = verifier();
    // The verifier's own dummy: the digest of a fixed sentence.
    let dummy = KeyDigest::of_secret("crossmodel-auth: no key has this secret");
    let known = Some(Arc::clone(&keys.records[0]));
    let unknown = None;
    let wrong = KeyDigest::of_secret("a wrong secret of twenty-two");

    for class in classes(rng) {
        let outcome = match class {
            Class::Left => &unknown,
            Class::Right => &known,
        };
        runner.run_one(class, || {
            compare_step(black_box(&dummy), black_box(outcome), black_box(&wrong))
        });
    }
}

fn unknown_vs_known_verify(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (verifier, keys) = verifier();
    let known: Vec<String> = (0..POOL)
        .map(|index| with_secret_changed(keys.key(index), 0..SECRET_LEN))
        .collect();
    let unknown: Vec<String> = (0..POOL)
        .map(|_| KeyFormat::public().generate().unwrap().expose().to_owned())
        .collect();

    for class in classes(rng) {
        let pool = match class {
            Class::Left => &unknown,
            Class::Right => &known,
        };
        let text = &pool[rng.random_range(0..POOL)];
        time_verify(runner, &verifier, class, text);
    }
}

fn same_input_calibration(runner: &mut CtRunner, rng: &mut BenchRng) {
    let (verifier, keys) = verifier();
    let text = with_secret_changed(keys.key(0), 0..SECRET_LEN);

    for class in classes(rng) {
        time_verify(runner, &verifier, class, &text);
    }
}

fn main() {
    let bench = |name, benchfn| BenchMetadata {
        name: BenchName(name),
        seed: None,
        benchfn,
    };
    let benches = vec![
        bench(
            "secret_prefix_verify",
            secret_prefix_verify as fn(&mut _, &mut _),
        ),
        bench("secret_prefix_stored", secret_prefix_stored),
        bench("digest_prefix_ct_eq", digest_prefix_ct_eq),
        bench("unknown_vs_known_ct_eq", unknown_vs_known_ct_eq),
        bench(
            "unknown_vs_known_compare_step",
            unknown_vs_known_compare_step,
        ),
        bench("unknown_vs_known_verify", unknown_vs_known_verify),
        bench("same_input_calibration", same_input_calibration),
    ];

    // `cargo bench` passes `--bench`; any other word is a filter.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let options = BenchOpts {
        filter,
        file_out: std::env::var_os("TIMING_CSV").map(Into::into),
        ..BenchOpts::default()
    };
    println!("{} samples per class", per_class());
    run_benches_console(options, benches).unwrap();
}
