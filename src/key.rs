//! The key format: generating, parsing, checksumming and digesting `cm-` keys.
//!
//! # Layout
//!
//! ```text
//! cm-  4f7Qk2ZpX9aB  _  V3nL0c8sRr1kTq5wYx2mZ7  0iG0zZ
//! │    │             │  │                       │
//! │    key id        │  secret                  checksum
//! │    12 base62     │  22 base62 (≥ 130 bits)  6 base62
//! prefix             separator
//! ```
//!
//! 44 characters in all, from `[A-Za-z0-9_-]` only. Every valid key matches
//!
//! ```text
//! ^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$
//! ```
//!
//! and a string that matches is a valid key exactly when its last six characters are
//! the checksum of the rest (a regular expression cannot compute a checksum, so
//! scanners match the shape and may verify the checksum as a second step).
//!
//! The checksum is computed over the first 38 bytes (`cm-`, id, `_`, secret):
//!
//! - **public** ([`KeyFormat::public`]): CRC-32 (IEEE), written as six base62 digits,
//!   most significant first. Anyone can compute it; it catches typos and truncation
//!   and lets scanners tell a real key from random text.
//! - **signed** ([`KeyFormat::signed`]): HMAC-SHA256 keyed with the deployment's
//!   signing secret; the first 8 bytes of the tag, big-endian, reduced modulo 62⁶ and
//!   written the same way. Only the issuer can compute it, so a forged key is
//!   rejected before any store call (a guess succeeds once in 62⁶ ≈ 5.7 × 10¹⁰).
//!
//! The base62 alphabet is `0-9`, `A-Z`, `a-z`, in that order.
//!
//! # Digest
//!
//! Stores keep [`KeyDigest`]: SHA-256 over the 22 ASCII bytes of the secret, 32
//! bytes, written as 64 lowercase hex digits where text is needed. The id is stored
//! beside it in clear; the checksum is not stored (it follows from id and secret).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "cm-";

/// Length of the public key id, in characters.
pub const KEY_ID_LEN: usize = 12;

/// Length of the secret, in characters.
pub const SECRET_LEN: usize = 22;

/// Length of the checksum, in characters.
pub const CHECKSUM_LEN: usize = 6;

/// Length of every valid key, in characters.
pub const KEY_LEN: usize = KEY_PREFIX.len() + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

/// A regular expression that matches the shape of every valid key (see the module
/// docs for the checksum it cannot express).
pub const KEY_REGEX: &str = "^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$";

const ID_START: usize = KEY_PREFIX.len();
const SEPARATOR: usize = ID_START + KEY_ID_LEN;
const SECRET_START: usize = SEPARATOR + 1;
const CHECKSUM_START: usize = SECRET_START + SECRET_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 62⁶: the number of distinct checksums.
const CHECKSUM_SPACE: u64 = 62 * 62 * 62 * 62 * 62 * 62;

/// Shortest signing secret accepted, in bytes.
pub const MIN_SIGNING_SECRET_LEN: usize = 32;

/// The public id of a key: twelve base62 characters, safe to show anywhere.
///
/// Stores are indexed by it. It is `Copy` and holds no heap memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Parses a key id: exactly twelve characters of `[0-9A-Za-z]`.
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] when the text has another length or another character.
    pub fn parse(text: &str) -> Result<Self, InvalidKeyId> {
        let bytes = text.as_bytes();
        if bytes.len() != KEY_ID_LEN || !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(InvalidKeyId { len: bytes.len() });
        }

        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(bytes);
        Ok(Self(id))
    }

    /// Takes the key id out of text that is either a bare key id or a whole key.
    ///
    /// Command lines and consoles accept both; a whole key must carry a valid public
    /// checksum or a valid tag of `format`.
    ///
    /// # Errors
    ///
    /// [`InvalidKeyId`] when the text is neither.
    pub fn from_id_or_key(text: &str, format: &KeyFormat) -> Result<Self, InvalidKeyId> {
        let text = text.trim();
        if text.starts_with(KEY_PREFIX) {
            return format
                .parse(text)
                .map(|key| key.id())
                .map_err(|_| InvalidKeyId { len: text.len() });
        }

        Self::parse(text)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // The constructor admits only ASCII alphanumerics.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    fn random() -> Result<Self, RandomnessError> {
        let mut id = [0; KEY_ID_LEN];
        fill_base62(&mut id)?;
        Ok(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.as_str())
    }
}

impl std::str::FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Text that is not a key id (nor a whole key, where one was allowed).
///
/// Shows only the length of what was given: the text may be a secret pasted in the
/// wrong place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKeyId {
    len: usize,
}

impl fmt::Display for InvalidKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a key id or key ({} characters); a key id is {KEY_ID_LEN} letters and digits, \
             as `keys list` shows it",
            self.len
        )
    }
}

impl std::error::Error for InvalidKeyId {}

/// SHA-256 of a key's secret: what stores keep instead of the key.
///
/// Compare digests with [`KeyDigest::ct_eq`], which takes the same time whatever the
/// contents. `Debug` does not show the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Digests a secret (the 22 characters between `_` and the checksum).
    pub fn of_secret(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Wraps 32 bytes read from a store.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a digest from a byte slice, as a database returns it.
    ///
    /// # Errors
    ///
    /// [`InvalidDigest`] unless the slice is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, InvalidDigest> {
        bytes.try_into().map(Self).map_err(|_| InvalidDigest)
    }

    /// Reads a digest from 64 hex digits (either case).
    ///
    /// # Errors
    ///
    /// [`InvalidDigest`] for anything else.
    pub fn from_hex(text: &str) -> Result<Self, InvalidDigest> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return Err(InvalidDigest);
        }

        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Ok(Self(bytes))
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";

        let mut text = String::with_capacity(64);
        for byte in self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        text
    }

    /// Compares two digests in constant time.
    pub fn ct_eq(&self, other: &Self) -> bool {
        // Four 64-bit words instead of 32 bytes: `subtle` puts an optimisation
        // barrier on every element, so fewer, wider elements cost a tenth as much
        // and are just as constant-time.
        self.words()[..].ct_eq(&other.words()[..]).into()
    }

    fn words(&self) -> [u64; 4] {
        let mut words = [0; 4];
        for (word, bytes) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut chunk = [0; 8];
            chunk.copy_from_slice(bytes);
            *word = u64::from_ne_bytes(chunk);
        }
        words
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

fn hex_value(digit: u8) -> Result<u8, InvalidDigest> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(InvalidDigest),
    }
}

/// Bytes that are not a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDigest;

impl fmt::Display for InvalidDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stored key digest is not 32 bytes (64 hex digits) of SHA-256")
    }
}

impl std::error::Error for InvalidDigest {}

/// A newly created key, in plaintext: the one time it exists.
///
/// Give it to its owner with [`ApiKey::expose`] and drop it; the memory is wiped on
/// drop. `Debug` and `Display` show only the prefix, the id and the last four
/// characters.
#[derive(Clone)]
pub struct ApiKey {
    text: Zeroizing<String>,
    id: KeyId,
}

impl ApiKey {
    /// The key's public id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The whole key, for the one place it must go (its owner).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The digest a store keeps for this key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of_secret(&self.text[SECRET_START..CHECKSUM_START])
    }

    /// A form safe to show: `cm-<id>_…<last 4>`.
    pub fn redacted(&self) -> Redacted {
        Redacted::new(self.id, &self.text)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.redacted())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.redacted(), f)
    }
}

/// The shown form of a key: `cm-<id>_…<last 4>`.
///
/// Built only from a key whose checksum was valid (SPEC: ids of malformed values are
/// attacker text and are never shown).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Redacted {
    id: KeyId,
    last4: [u8; 4],
}

impl Redacted {
    fn new(id: KeyId, key: &str) -> Self {
        let mut last4 = [b'?'; 4];
        last4.copy_from_slice(&key.as_bytes()[KEY_LEN - 4..KEY_LEN]);
        Self { id, last4 }
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last4 = std::str::from_utf8(&self.last4).unwrap_or("????");
        write!(f, "{KEY_PREFIX}{}_…{last4}", self.id)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key as presented by a caller, after its shape and checksum were checked.
///
/// Borrows the caller's text; `Debug` is redacted.
#[derive(Clone, Copy)]
pub struct PresentedKey<'a> {
    id: KeyId,
    text: &'a str,
}

impl<'a> PresentedKey<'a> {
    /// The public id, which is now known to be checksum-valid and so may be logged.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret part.
    pub fn secret(&self) -> &'a str {
        &self.text[SECRET_START..CHECKSUM_START]
    }

    /// SHA-256 of the secret, to compare with the stored digest.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of_secret(self.secret())
    }

    /// The form safe to show.
    pub fn redacted(&self) -> Redacted {
        Redacted::new(self.id, self.text)
    }
}

impl fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedKey({})", self.redacted())
    }
}

/// Why a presented value is not a key. Shows only its kind and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedKey {
    /// Not [`KEY_LEN`] characters long.
    Length(usize),
    /// A character outside the layout (wrong prefix, separator or alphabet).
    Shape,
    /// The checksum does not match the rest.
    Checksum,
}

impl fmt::Display for MalformedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(len) => write!(f, "key has {len} characters, expected {KEY_LEN}"),
            Self::Shape => f.write_str("key does not have the cm- key layout"),
            Self::Checksum => f.write_str("key checksum does not match: mistyped or truncated"),
        }
    }
}

impl std::error::Error for MalformedKey {}

/// A signing secret for keyed checksums. Wiped from memory on drop; never shown.
#[derive(Clone)]
pub struct SigningSecret(Zeroizing<Vec<u8>>);

impl SigningSecret {
    /// Wraps secret bytes: at least [`MIN_SIGNING_SECRET_LEN`] of them, random.
    ///
    /// # Errors
    ///
    /// [`WeakSigningSecret`] when the secret is shorter.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, WeakSigningSecret> {
        let mut bytes = bytes.into();
        if bytes.len() < MIN_SIGNING_SECRET_LEN {
            let len = bytes.len();
            bytes.zeroize();
            return Err(WeakSigningSecret { len });
        }

        Ok(Self(Zeroizing::new(bytes)))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

/// A signing secret that is too short to resist guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakSigningSecret {
    len: usize,
}

impl fmt::Display for WeakSigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "signing secret has {} bytes; use at least {MIN_SIGNING_SECRET_LEN} random bytes",
            self.len
        )
    }
}

impl std::error::Error for WeakSigningSecret {}

/// The operating system's random source failed; no key was made.
#[derive(Debug)]
pub struct RandomnessError(getrandom::Error);

impl fmt::Display for RandomnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the operating system's random source failed: {}", self.0)
    }
}

impl std::error::Error for RandomnessError {}

/// How keys are checksummed: publicly (CRC-32) or with signing secrets (HMAC).
///
/// The layer and the store that creates keys must use the same format.
///
/// # Example
///
/// ```
/// use crossmodel_auth::KeyFormat;
///
/// let format = KeyFormat::public();
/// let key = format.generate()?;
/// let parsed = format.parse(key.expose())?;
/// assert_eq!(parsed.id(), key.id());
/// assert!(format.parse("cm-not-a-key").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct KeyFormat {
    // Keyed MACs, newest first, each already initialised with its secret so a
    // check costs a clone and two compressions, not a key schedule.
    signers: Option<Arc<[Hmac<Sha256>]>>,
}

impl KeyFormat {
    /// Public CRC-32 checksums: the default.
    pub fn public() -> Self {
        Self::default()
    }

    /// Keyed checksums. `secrets` are newest first: keys are issued under the first
    /// and accepted under any, so keys made before a rotation keep working until
    /// they are reissued.
    ///
    /// # Panics
    ///
    /// When `secrets` is empty: a signed format with nothing to sign with is a
    /// configuration mistake, not a state to run in.
    pub fn signed(secrets: impl IntoIterator<Item = SigningSecret>) -> Self {
        let signers: Arc<[Hmac<Sha256>]> = secrets
            .into_iter()
            .map(|secret| {
                <Hmac<Sha256> as Mac>::new_from_slice(&secret.0)
                    .expect("HMAC-SHA256 accepts keys of any length")
            })
            .collect();
        assert!(
            !signers.is_empty(),
            "KeyFormat::signed needs at least one signing secret"
        );

        Self {
            signers: Some(signers),
        }
    }

    /// Whether checksums are keyed.
    pub fn is_signed(&self) -> bool {
        self.signers.is_some()
    }

    /// Makes a new key from the operating system's random source.
    ///
    /// # Errors
    ///
    /// [`RandomnessError`] when the operating system cannot provide random bytes.
    pub fn generate(&self) -> Result<ApiKey, RandomnessError> {
        let id = KeyId::random()?;
        let mut text = Zeroizing::new([0u8; KEY_LEN]);

        text[..ID_START].copy_from_slice(KEY_PREFIX.as_bytes());
        text[ID_START..SEPARATOR].copy_from_slice(&id.0);
        text[SEPARATOR] = b'_';
        fill_base62(&mut text[SECRET_START..CHECKSUM_START])?;
        let checksum = self.checksum_for_issue(&text[..CHECKSUM_START]);
        text[CHECKSUM_START..].copy_from_slice(&checksum);

        let text = std::str::from_utf8(&text[..])
            .unwrap_or_default()
            .to_owned();
        Ok(ApiKey {
            text: Zeroizing::new(text),
            id,
        })
    }

    /// Checks the shape and checksum of a presented key, without any store.
    ///
    /// # Errors
    ///
    /// [`MalformedKey`] with the reason; it never holds any of the input.
    pub fn parse<'a>(&self, text: &'a str) -> Result<PresentedKey<'a>, MalformedKey> {
        let bytes = text.as_bytes();
        if bytes.len() != KEY_LEN {
            return Err(MalformedKey::Length(bytes.len()));
        }
        if !has_key_shape(bytes) {
            return Err(MalformedKey::Shape);
        }
        if !self.checksum_matches(&bytes[..CHECKSUM_START], &bytes[CHECKSUM_START..]) {
            return Err(MalformedKey::Checksum);
        }

        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&bytes[ID_START..SEPARATOR]);
        Ok(PresentedKey {
            id: KeyId(id),
            text,
        })
    }

    fn checksum_for_issue(&self, body: &[u8]) -> [u8; CHECKSUM_LEN] {
        match &self.signers {
            Some(signers) => keyed_checksum(&signers[0], body),
            None => public_checksum(body),
        }
    }

    fn checksum_matches(&self, body: &[u8], presented: &[u8]) -> bool {
        match &self.signers {
            // Any accepted secret may have issued the key; compare each tag in
            // constant time so the comparison does not tell how close a guess was.
            Some(signers) => signers
                .iter()
                .any(|signer| bool::from(keyed_checksum(signer, body).ct_eq(presented))),
            None => public_checksum(body) == presented,
        }
    }
}

impl fmt::Debug for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.signers {
            Some(signers) => write!(f, "KeyFormat::Signed({} secrets)", signers.len()),
            None => f.write_str("KeyFormat::Public"),
        }
    }
}

fn has_key_shape(bytes: &[u8]) -> bool {
    bytes.starts_with(KEY_PREFIX.as_bytes())
        && bytes[SEPARATOR] == b'_'
        && bytes[ID_START..SEPARATOR]
            .iter()
            .chain(&bytes[SECRET_START..])
            .all(u8::is_ascii_alphanumeric)
}

fn public_checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    encode_checksum(u64::from(crc32fast::hash(body)))
}

fn keyed_checksum(signer: &Hmac<Sha256>, body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut mac = signer.clone();
    mac.update(body);
    let tag = mac.finalize().into_bytes();

    let mut first = [0; 8];
    first.copy_from_slice(&tag[..8]);
    encode_checksum(u64::from_be_bytes(first) % CHECKSUM_SPACE)
}

fn encode_checksum(mut value: u64) -> [u8; CHECKSUM_LEN] {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

/// Fills `out` with uniform base62 characters from the OS random source.
pub(crate) fn fill_base62(out: &mut [u8]) -> Result<(), RandomnessError> {
    let mut pool = Zeroizing::new([0u8; 64]);
    let mut used = pool.len();

    for slot in out.iter_mut() {
        loop {
            if used == pool.len() {
                getrandom::fill(&mut pool[..]).map_err(RandomnessError)?;
                used = 0;
            }
            let byte = pool[used];
            used += 1;

            // 248 = 4 × 62: rejecting the top 8 values keeps every digit equally likely.
            if byte < 248 {
                *slot = BASE62[usize::from(byte % 62)];
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(byte: u8) -> KeyFormat {
        KeyFormat::signed([SigningSecret::new(vec![byte; 32]).unwrap()])
    }

    fn matches_regex(text: &str) -> bool {
        // The regex of the docs, spelled out: `^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$`.
        let bytes = text.as_bytes();
        bytes.len() == 44
            && text.starts_with("cm-")
            && bytes[3..15].iter().all(u8::is_ascii_alphanumeric)
            && bytes[15] == b'_'
            && bytes[16..].iter().all(u8::is_ascii_alphanumeric)
    }

    #[test]
    fn generated_keys_parse_and_match_the_documented_layout() {
        let format = KeyFormat::public();
        for _ in 0..500 {
            let key = format.generate().unwrap();
            let text = key.expose();

            assert_eq!(text.len(), KEY_LEN);
            assert!(matches_regex(text), "{}", key.redacted());
            let parsed = format.parse(text).unwrap();
            assert_eq!(parsed.id(), key.id());
            assert_eq!(parsed.digest(), key.digest());
        }
    }

    #[test]
    fn the_documented_example_key_is_valid() {
        let example = "cm-4f7Qk2ZpX9aB_V3nL0c8sRr1kTq5wYx2mZ70iG0zZ";

        let parsed = KeyFormat::public().parse(example).unwrap();
        assert_eq!(parsed.id().as_str(), "4f7Qk2ZpX9aB");
        assert_eq!(parsed.secret(), "V3nL0c8sRr1kTq5wYx2mZ7");
    }

    #[test]
    fn the_regex_constant_is_the_documented_one() {
        assert_eq!(KEY_REGEX, "^cm-[0-9A-Za-z]{12}_[0-9A-Za-z]{28}$");
        assert_eq!(KEY_LEN, 44);
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let format = KeyFormat::public();
        let key = format.generate().unwrap();
        let text = key.expose().as_bytes().to_vec();

        for position in 0..text.len() {
            for &replacement in BASE62.iter().chain(b"-_ ") {
                if replacement == text[position] {
                    continue;
                }
                let mut changed = text.clone();
                changed[position] = replacement;
                let changed = String::from_utf8(changed).unwrap();
                assert!(format.parse(&changed).is_err(), "position {position}");
            }
        }
    }

    #[test]
    fn truncated_and_extended_keys_are_rejected_by_length() {
        let format = KeyFormat::public();
        let key = format.generate().unwrap();
        let text = key.expose();

        assert_eq!(
            format.parse(&text[..43]).unwrap_err(),
            MalformedKey::Length(43)
        );
        assert_eq!(
            format.parse(&format!("{text}A")).unwrap_err(),
            MalformedKey::Length(45)
        );
        assert!(format.parse("").is_err());
        assert!(format.parse("cm-").is_err());
    }

    #[test]
    fn prefix_in_another_case_is_rejected() {
        let format = KeyFormat::public();
        let key = format.generate().unwrap();
        let upper = key.expose().replacen("cm-", "CM-", 1);

        assert_eq!(format.parse(&upper).unwrap_err(), MalformedKey::Shape);
    }

    #[test]
    fn non_ascii_of_the_right_length_is_rejected_without_panic() {
        let format = KeyFormat::public();
        // 44 bytes, with a multi-byte character straddling the separator position.
        let text = format!("cm-{}é{}", "a".repeat(11), "b".repeat(28));
        assert_eq!(text.len(), 44);

        assert!(format.parse(&text).is_err());
    }

    #[test]
    fn signed_keys_need_the_secret() {
        let issuer = signed(1);
        let key = issuer.generate().unwrap();

        assert!(issuer.parse(key.expose()).is_ok());
        assert_eq!(
            signed(2).parse(key.expose()).unwrap_err(),
            MalformedKey::Checksum
        );
        assert_eq!(
            KeyFormat::public().parse(key.expose()).unwrap_err(),
            MalformedKey::Checksum
        );
    }

    #[test]
    fn public_keys_fail_a_signed_format() {
        let key = KeyFormat::public().generate().unwrap();

        assert!(signed(1).parse(key.expose()).is_err());
    }

    #[test]
    fn rotation_accepts_keys_of_the_previous_secret() {
        let old = signed(1);
        let old_key = old.generate().unwrap();
        let rotated = KeyFormat::signed([
            SigningSecret::new(vec![2; 32]).unwrap(),
            SigningSecret::new(vec![1; 32]).unwrap(),
        ]);

        assert!(rotated.parse(old_key.expose()).is_ok());
        let new_key = rotated.generate().unwrap();
        assert!(signed(2).parse(new_key.expose()).is_ok());
        assert!(old.parse(new_key.expose()).is_err());
    }

    #[test]
    fn short_signing_secrets_are_refused() {
        let err = SigningSecret::new(vec![7; 31]).unwrap_err();
        assert!(err.to_string().contains("at least 32"));
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let format = KeyFormat::public();
        let key = format.generate().unwrap();
        let secret = &key.expose()[16..38];
        let parsed = format.parse(key.expose()).unwrap();

        for shown in [
            format!("{key:?}"),
            format!("{key}"),
            format!("{parsed:?}"),
            format!("{:?}", parsed.digest()),
            format!("{:?}", SigningSecret::new(vec![9; 32]).unwrap()),
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let shown = key.to_string();
        assert!(shown.starts_with(&format!("cm-{}_…", key.id())));
        assert!(shown.ends_with(&key.expose()[40..]));
    }

    #[test]
    fn digests_differing_in_any_byte_compare_unequal() {
        let digest = KeyDigest::of_secret("abc");
        assert!(digest.ct_eq(&KeyDigest::of_secret("abc")));

        for position in 0..32 {
            let mut bytes = *digest.as_bytes();
            bytes[position] ^= 0x01;
            assert!(
                !digest.ct_eq(&KeyDigest::from_bytes(bytes)),
                "byte {position}"
            );
        }
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let digest = KeyDigest::of_secret("abc");
        let hex = digest.to_hex();

        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyDigest::from_hex(&hex).unwrap(), digest);
        assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()).unwrap(), digest);
        assert!(KeyDigest::from_hex(&hex[..63]).is_err());
        assert!(KeyDigest::from_hex(&hex.replace('a', "g")).is_err());
    }

    #[test]
    fn key_id_accepts_an_id_or_a_whole_key() {
        let format = KeyFormat::public();
        let key = format.generate().unwrap();

        assert_eq!(
            KeyId::from_id_or_key(key.expose(), &format).unwrap(),
            key.id()
        );
        assert_eq!(
            KeyId::from_id_or_key(key.id().as_str(), &format).unwrap(),
            key.id()
        );
        assert!(KeyId::from_id_or_key("short", &format).is_err());
        let broken = key.expose().replacen('_', "-", 1);
        assert!(KeyId::from_id_or_key(&broken, &format).is_err());
    }

    #[test]
    fn checksum_encoding_is_fixed_width() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(CHECKSUM_SPACE - 1), b"zzzzzz");
    }
}
