//! What the fuzz targets share: an independent model of the documented key layout
//! (the oracle the crate's parser is checked against), and a store that records every
//! id it is asked for.
//!
//! The model is written from the layout in the crate's `key` module docs, not from
//! its code, so that a difference between the two shows up as a failed assertion.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use crossmodel_auth::{
    KeyId, KeyManager, KeyRecord, KeyStore, MemoryKeyStore, NewKey, SigningSecret, StoreError,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The documented base62 alphabet, in order.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of every valid key.
pub const KEY_LEN: usize = 44;

/// Maps any byte onto the base62 alphabet, so arbitrary input can build keys.
pub fn base62(byte: u8) -> u8 {
    BASE62[usize::from(byte) % BASE62.len()]
}

/// Six base62 digits, most significant first.
pub fn six_digits(mut value: u64) -> [u8; 6] {
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// The public checksum of the first 38 bytes: CRC-32 in six base62 digits.
pub fn public_checksum(body: &[u8]) -> [u8; 6] {
    six_digits(u64::from(crc32fast::hash(body)))
}

/// The signed checksum: HMAC-SHA256, first 8 bytes big-endian, modulo 62⁶.
pub fn signed_checksum(secret: &[u8], body: &[u8]) -> [u8; 6] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();

    let mut first = [0; 8];
    first.copy_from_slice(&tag[..8]);
    six_digits(u64::from_be_bytes(first) % 62u64.pow(6))
}

/// Whether `text` matches `^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$`.
pub fn has_documented_shape(text: &[u8]) -> bool {
    text.len() == KEY_LEN
        && text.starts_with(b"cm-")
        && text[3..15].iter().all(u8::is_ascii_alphanumeric)
        && text[15] == b'_'
        && text[16..].iter().all(u8::is_ascii_alphanumeric)
}

/// Builds a key from its parts: `cm-`, id, `_`, secret, then the checksum that
/// `checksum` computes over those 38 bytes.
pub fn assemble(id: &[u8], secret: &[u8], checksum: impl Fn(&[u8]) -> [u8; 6]) -> String {
    let mut text = Vec::with_capacity(KEY_LEN);
    text.extend_from_slice(b"cm-");
    text.extend_from_slice(id);
    text.push(b'_');
    text.extend_from_slice(secret);
    let sum = checksum(&text);
    text.extend_from_slice(&sum);
    String::from_utf8(text).expect("base62 is ASCII")
}

/// A signing secret of 32 copies of `byte`: fixed so crashes reproduce.
pub fn signing_secret(byte: u8) -> SigningSecret {
    SigningSecret::new(vec![byte; 32]).expect("32 bytes is long enough")
}

/// What a fixture key should get when presented whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Accepted.
    Accepted,
    /// `api_key_inactive`.
    KeyInactive,
    /// `user_inactive`.
    UserInactive,
    /// `invalid_api_key`: the key was deleted.
    Unknown,
}

/// A key of the fixture: its plaintext and what presenting it should get.
#[derive(Debug, Clone)]
pub struct FixtureKey {
    /// The whole key.
    pub text: String,
    /// Its id.
    pub id: KeyId,
    /// The outcome when it is presented alone.
    pub expect: Expect,
}

/// A store holding one key in each state the layer distinguishes.
pub async fn fixture_store() -> (MemoryKeyStore, Vec<FixtureKey>) {
    let store = MemoryKeyStore::new();
    let mut keys = Vec::new();
    let past = SystemTime::now() - Duration::from_secs(3600);

    let plan = [
        (NewKey::for_user("alice"), Expect::Accepted),
        (NewKey::for_user("bob"), Expect::Accepted),
        (NewKey::for_user("alice"), Expect::KeyInactive),
        (NewKey::for_user("alice"), Expect::KeyInactive),
        (
            NewKey::for_user("alice").expires_at(past),
            Expect::KeyInactive,
        ),
        (NewKey::for_user("mallory"), Expect::UserInactive),
        (NewKey::for_user("alice"), Expect::Unknown),
    ];
    for (new, expect) in plan {
        let created = store
            .create_key(new)
            .await
            .expect("memory store creates keys");
        keys.push(FixtureKey {
            text: created.key.expose().to_owned(),
            id: created.key.id(),
            expect,
        });
    }
    let (disabled, revoked, deleted) = (keys[2].id, keys[3].id, keys[6].id);

    store.disable_key(&disabled).await.expect("known key");
    store.revoke_key(&revoked).await.expect("known key");
    store.disable_user("mallory").await.expect("known user");
    store.delete_key(&deleted).await.expect("known key");
    (store, keys)
}

/// Wraps a store and writes down every id it is asked for, on either path.
#[derive(Debug, Clone)]
pub struct RecordingStore<S> {
    inner: S,
    asked: Arc<Mutex<Vec<KeyId>>>,
    answer_now: bool,
}

impl<S> RecordingStore<S> {
    /// Records lookups of `inner`. With `answer_now`, lookups are answered on the
    /// synchronous path; without, they go through the boxed future and the deadline.
    pub fn new(inner: S, answer_now: bool) -> Self {
        Self {
            inner,
            asked: Arc::default(),
            answer_now,
        }
    }

    /// Takes the ids asked for so far, leaving the record empty.
    pub fn take_asked(&self) -> Vec<KeyId> {
        std::mem::take(&mut *self.asked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn note(&self, id: &KeyId) {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(*id);
    }
}

#[async_trait]
impl<S: KeyStore> KeyStore for RecordingStore<S> {
    async fn lookup(&self, id: &KeyId) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        self.note(id);
        self.inner.lookup(id).await
    }

    fn lookup_now(&self, id: &KeyId) -> Option<Result<Option<Arc<KeyRecord>>, StoreError>> {
        if !self.answer_now {
            return None;
        }
        self.note(id);
        self.inner.lookup_now(id)
    }

    fn record_use(&self, id: &KeyId, at: SystemTime) {
        self.inner.record_use(id, at);
    }
}

/// Every id of a checksum-valid (public) key found anywhere inside `value`.
pub fn valid_ids_within(value: &[u8]) -> Vec<KeyId> {
    if value.len() < KEY_LEN {
        return Vec::new();
    }
    value
        .windows(KEY_LEN)
        .filter(|window| {
            has_documented_shape(window) && public_checksum(&window[..38]) == window[38..]
        })
        .filter_map(|window| std::str::from_utf8(&window[3..15]).ok())
        .filter_map(|id| KeyId::parse(id).ok())
        .collect()
}

/// Whether `haystack` contains `needle` anywhere.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}
