//! The documented key layout and regular expression, checked with a real regex engine
//! against generated keys and near misses.

use crossmodel_auth::KeyFormat;
use crossmodel_auth::key::{KEY_LEN, KEY_REGEX};
use regex::Regex;

fn regex() -> Regex {
    Regex::new(KEY_REGEX).expect("the documented regex compiles")
}

#[test]
fn the_regex_matches_every_generated_key() {
    let regex = regex();

    for format in [KeyFormat::public(), signed()] {
        for _ in 0..1_000 {
            let key = format.generate().expect("random source works");
            assert!(regex.is_match(key.expose()), "{key}");
            assert_eq!(key.expose().len(), KEY_LEN);
        }
    }
}

#[test]
fn the_regex_rejects_near_misses() {
    let regex = regex();
    let key = KeyFormat::public().generate().expect("random source works");
    let text = key.expose();

    let near_misses = [
        text.replacen("cm-", "CM-", 1),
        text.replacen("cm-", "cm_", 1),
        text.replacen('_', "-", 1),
        text[..KEY_LEN - 1].to_owned(),
        format!("{text}a"),
        format!(" {text}"),
        format!("{}!{}", &text[..20], &text[21..]),
        format!("sk-{}", &text[3..]),
    ];
    for miss in near_misses {
        assert!(!regex.is_match(&miss), "{miss:?} should not match");
    }
}

#[test]
fn a_key_that_matches_the_shape_is_valid_only_with_its_checksum() {
    let format = KeyFormat::public();
    let key = format.generate().expect("random source works");
    let text = key.expose();

    // Swap two different secret characters: same shape, checksum no longer fits.
    let bytes = text.as_bytes();
    let (i, j) = (20..37)
        .flat_map(|i| (i + 1..38).map(move |j| (i, j)))
        .find(|&(i, j)| bytes[i] != bytes[j])
        .expect("a 22-character random secret has two different characters");
    let mut swapped = bytes.to_vec();
    swapped.swap(i, j);
    let swapped = String::from_utf8(swapped).expect("still ASCII");

    assert!(regex().is_match(&swapped));
    assert!(format.parse(&swapped).is_err());
    assert!(format.parse(text).is_ok());
}

fn signed() -> KeyFormat {
    let secret = crossmodel_auth::SigningSecret::new(vec![42; 32]).expect("long enough");
    KeyFormat::signed([secret])
}
