//! Keeping keys out of text that other people read: logs, listings, messages.

use std::borrow::Cow;

use crate::key::{KEY_ID_LEN, KEY_PREFIX};

/// A request path as it may be logged: each segment is cut from a `cm-` on to
/// `cm-…`, so a key put in a URL by mistake (`/v1/models/cm-…`, a wrong SDK base
/// URL) does not reach the logs. Paths without `cm-` come back borrowed.
///
/// The layer logs paths this way; use it in your own request logs too.
///
/// ```
/// use crossmodel_auth::redact_path;
///
/// assert_eq!(redact_path("/v1/models"), "/v1/models");
/// assert_eq!(redact_path("/v1/models/cm-AbC123_x/info"), "/v1/models/cm-…/info");
/// ```
pub fn redact_path(path: &str) -> Cow<'_, str> {
    if !path.contains(KEY_PREFIX) {
        return Cow::Borrowed(path);
    }

    let mut shown = String::with_capacity(path.len());
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            shown.push('/');
        }
        match segment.find(KEY_PREFIX) {
            Some(at) => {
                shown.push_str(&segment[..at]);
                shown.push_str("cm-…");
            }
            None => shown.push_str(segment),
        }
    }
    Cow::Owned(shown)
}

/// Whether `text` holds what looks like the start of a key: `cm-` followed by at
/// least an id's worth of letters, digits and `_`. Stores refuse such user ids and
/// key names, which would otherwise be shown in listings and logs.
pub(crate) fn looks_like_a_key(text: &str) -> bool {
    let bytes = text.as_bytes();

    bytes
        .windows(KEY_PREFIX.len())
        .enumerate()
        .filter(|(_, window)| *window == KEY_PREFIX.as_bytes())
        .any(|(at, _)| {
            let rest = &bytes[at + KEY_PREFIX.len()..];
            let run = rest
                .iter()
                .take_while(|byte| byte.is_ascii_alphanumeric() || **byte == b'_')
                .count();
            run > KEY_ID_LEN
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyFormat;

    #[test]
    fn logged_paths_lose_anything_from_a_key_prefix_on_within_its_segment() {
        assert_eq!(redact_path("/v1/models"), "/v1/models");
        assert_eq!(
            redact_path("/v1/keys/cm-AAAAAAAAAAAA_BBBB/usage"),
            "/v1/keys/cm-…/usage"
        );
        assert_eq!(redact_path("/x/keycm-abc/cm-"), "/x/keycm-…/cm-…");
    }

    #[test]
    fn keys_and_key_fragments_look_like_keys_but_names_do_not() {
        let key = KeyFormat::public().generate().unwrap();
        let text = key.expose();

        for suspicious in [
            text.to_owned(),
            format!("owner {text}"),
            text[..30].to_owned(),
            format!("x{}", &text[..16]),
        ] {
            assert!(looks_like_a_key(&suspicious), "{}", suspicious.len());
        }
        for fine in ["alice", "cm-team", "cm-production", "team-cm-1", "cm-", ""] {
            assert!(!looks_like_a_key(fine), "{fine}");
        }
    }
}
