//! `KeyFormat::parse`, public and signed, against an independent model of the
//! documented layout: a text parses exactly when it has the documented shape and a
//! checksum one of the accepted secrets (or the public CRC) gives; a parsed key
//! rebuilds to the same bytes from its parts; errors and shown forms hold nothing of
//! the input beyond what the crate allows.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use crossmodel_auth::{KeyFormat, KeyId, PresentedKey};
use crossmodel_auth_fuzz::{
    KEY_LEN, assemble, base62, has_documented_shape, public_checksum, signed_checksum,
    signing_secret,
};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// What a `MalformedKey` may show, digits removed (its one number is a length).
const MALFORMED_SHOWN: [&str; 3] = [
    "key has  characters, expected  | Length()",
    "key does not have the cm- key layout | Shape",
    "key checksum does not match: mistyped or truncated | Checksum",
];

/// What an `InvalidKeyId` may show, digits removed.
const INVALID_ID_SHOWN: &str = "not a key id or key ( characters); a key id is  letters and \
                                digits, as `keys list` shows it | InvalidKeyId { len:  }";

/// The formats under test: public, one secret, and a rotation (newest first).
struct Formats {
    public: KeyFormat,
    single: KeyFormat,
    rotated: KeyFormat,
}

static FORMATS: LazyLock<Formats> = LazyLock::new(|| Formats {
    public: KeyFormat::public(),
    single: KeyFormat::signed([signing_secret(1)]),
    rotated: KeyFormat::signed([signing_secret(2), signing_secret(1)]),
});

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Which {
    Public,
    Single,
    Rotated,
}

impl Which {
    fn format(self) -> &'static KeyFormat {
        match self {
            Self::Public => &FORMATS.public,
            Self::Single => &FORMATS.single,
            Self::Rotated => &FORMATS.rotated,
        }
    }

    /// The model: whether `body` (38 bytes) and `sum` agree under this format.
    fn accepts(self, body: &[u8], sum: &[u8]) -> bool {
        match self {
            Self::Public => public_checksum(body) == sum,
            Self::Single => signed_checksum(&[1; 32], body) == sum,
            Self::Rotated => {
                signed_checksum(&[2; 32], body) == sum || signed_checksum(&[1; 32], body) == sum
            }
        }
    }
}

/// Who computed the checksum of a built key.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Issuer {
    Public,
    Secret(u8),
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text at all.
    Text(Which, String),
    /// A key built from parts, maybe with one byte changed.
    Built {
        which: Which,
        issuer: Issuer,
        id: [u8; 12],
        secret: [u8; 22],
        change: Option<(u8, u8)>,
    },
    /// A key the crate generates, maybe with one byte changed.
    Generated {
        which: Which,
        change: Option<(u8, u8)>,
    },
}

fuzz_target!(|input: Input| {
    let (which, text) = match input {
        Input::Text(which, text) => (which, text),
        Input::Built {
            which,
            issuer,
            id,
            secret,
            change,
        } => {
            let id = id.map(base62);
            let secret = secret.map(base62);
            let text = match issuer {
                Issuer::Public => assemble(&id, &secret, public_checksum),
                Issuer::Secret(byte) => {
                    assemble(&id, &secret, |body| signed_checksum(&[byte % 4; 32], body))
                }
            };
            (which, changed(text, change))
        }
        Input::Generated { which, change } => {
            let key = which.format().generate().expect("the OS has randomness");
            assert!(which.format().parse(key.expose()).is_ok(), "{key}");
            assert!(has_documented_shape(key.expose().as_bytes()));
            (which, changed(key.expose().to_owned(), change))
        }
    };
    check(which, &text);
});

/// Replaces the byte at `at` (mod the length) by `byte`, when the result is text.
fn changed(text: String, change: Option<(u8, u8)>) -> String {
    let Some((at, byte)) = change else {
        return text;
    };
    let mut bytes = text.into_bytes();
    let at = usize::from(at) % bytes.len();
    bytes[at] = byte;
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(which: Which, text: &str) {
    let bytes = text.as_bytes();
    let expected = has_documented_shape(bytes) && which.accepts(&bytes[..38], &bytes[38..]);

    match which.format().parse(text) {
        Ok(key) => {
            assert!(expected, "accepted a text the documented layout refuses");
            check_parsed(&key, text);
        }
        Err(error) => {
            assert!(!expected, "refused a text the documented layout accepts");
            // Only a length may vary: no byte of the input is echoed.
            let shown = without_digits(&format!("{error} | {error:?}"));
            assert!(MALFORMED_SHOWN.contains(&shown.as_str()), "{shown}");
        }
    }
    check_id_or_key(which, text);
}

/// A parsed key rebuilds to the presented bytes, and shows only what is allowed.
fn without_digits(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn check_parsed(key: &PresentedKey<'_>, text: &str) {
    let rebuilt = format!(
        "cm-{}_{}{}",
        key.id().as_str(),
        key.secret(),
        &text[KEY_LEN - 6..]
    );
    assert_eq!(rebuilt, text);

    let digest: [u8; 32] = Sha256::digest(key.secret().as_bytes()).into();
    assert_eq!(key.digest().as_bytes(), &digest);

    let redacted = key.redacted().to_string();
    assert_eq!(
        redacted,
        format!("cm-{}_…{}", key.id().as_str(), &text[KEY_LEN - 4..])
    );
    let debug = format!("{key:?} {:?}", key.digest());
    assert!(!debug.contains(key.secret()), "{debug}");
}

/// `KeyId::from_id_or_key` takes a bare id or a whole valid key, nothing else.
fn check_id_or_key(which: Which, text: &str) {
    let trimmed = text.trim();
    let parsed = KeyId::from_id_or_key(text, which.format());

    if trimmed.starts_with("cm-") {
        let whole = which.format().parse(trimmed).ok().map(|key| key.id());
        assert_eq!(parsed.as_ref().ok().copied(), whole);
    } else {
        let bare = trimmed.len() == 12 && trimmed.bytes().all(|b| b.is_ascii_alphanumeric());
        assert_eq!(parsed.is_ok(), bare);
    }
    if let Err(error) = parsed {
        let shown = without_digits(&format!("{error} | {error:?}"));
        assert_eq!(shown, INVALID_ID_SHOWN);
    }
}
