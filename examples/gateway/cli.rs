//! The command line: `gateway [--db URL] serve|keys|users …`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Arg, Args, Parser, Subcommand};
use crossmodel_auth::store::{validate_new_key, validate_user_id};
use crossmodel_auth::{KeyFormat, KeyId, NewKey, looks_like_key};

use crate::store::cut_keys;

/// The models the echo model answers for unless `--models` says otherwise.
pub(crate) const DEFAULT_MODELS: &str = "deepseek/deepseek-v4-pro,anthropic/claude-sonnet-4.6";

/// An LLM gateway that authenticates every request with a `cm-` API key.
///
/// With no upstream configured, a built-in echo model answers in the exact shapes of
/// the OpenAI and Anthropic APIs, so the official SDKs work against it.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub(crate) struct Cli {
    /// The key database: `sqlite://FILE` or `postgres://…`.
    #[arg(
        long,
        global = true,
        env = "CROSSMODEL_DB",
        hide_env_values = true,
        default_value = "sqlite://gateway.db",
        value_name = "URL"
    )]
    pub(crate) db: String,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serves the OpenAI- and Anthropic-compatible API.
    Serve(ServeArgs),
    /// Creates, lists and switches off API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Lists, disables and enables users.
    #[command(subcommand)]
    Users(UsersCommand),
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,

    /// The models the echo model answers for, comma-separated. An id shaped like a
    /// key is refused: model ids are logged and listed.
    #[arg(
        long,
        env = "GATEWAY_MODELS",
        value_delimiter = ',',
        value_parser = Checked(check_model_id),
        default_value = DEFAULT_MODELS,
        value_name = "IDS"
    )]
    pub(crate) models: Vec<String>,
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Creates a key and prints it, alone, on standard output. It is shown once.
    Create {
        /// The user who owns the key (created if new): 1 to 128 visible ASCII
        /// characters.
        #[arg(long, value_parser = Checked(check_user_id), value_name = "USER")]
        user: String,

        /// A name to recognise the key by in listings: at most 256 bytes, no
        /// control characters.
        #[arg(long, value_parser = Checked(check_key_name), value_name = "NAME")]
        name: Option<String>,

        /// How long the key works: an integer followed by s, m, h or d (`30d`).
        #[arg(long, value_parser = parse_duration, value_name = "DUR")]
        expires_in: Option<Duration>,
    },
    /// Lists every key: id, name, user, state, expiry and last use. Never a secret.
    List {
        /// Prints a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Switches a key off until it is enabled again.
    Disable(KeyArg),
    /// Switches a disabled key back on (a revoked key stays off).
    Enable(KeyArg),
    /// Switches a key off for good; it stays listed for audit.
    Revoke(KeyArg),
    /// Deletes a key: afterwards it is answered like any unknown key.
    Delete(KeyArg),
}

/// The key a command acts on.
#[derive(Debug, Args)]
pub(crate) struct KeyArg {
    /// A key id as `keys list` shows it, or the whole `cm-` key.
    #[arg(value_parser = Checked(parse_key_id), value_name = "KEY_ID_OR_KEY")]
    pub(crate) key: KeyId,
}

/// `users …`.
#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Lists every user, with their state and number of keys.
    List {
        /// Prints a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Switches off every key of a user until the user is enabled again.
    Disable(UserArg),
    /// Switches a disabled user back on.
    Enable(UserArg),
}

/// The user a command acts on.
#[derive(Debug, Args)]
pub(crate) struct UserArg {
    /// The user id.
    #[arg(value_parser = Checked(check_user_id), value_name = "USER")]
    pub(crate) user: String,
}

/// A text argument checked (and parsed) as the key stores will check it, so that a
/// value no store would take is a usage error (exit 2) before any database is
/// opened. Unlike clap's own value errors, the message never repeats the value: it
/// may be a key pasted in the wrong place, or hold control characters that would
/// break the line.
#[derive(Debug, Clone, Copy)]
struct Checked<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Checked<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |reason: &str| {
            let arg = arg.map_or_else(|| "the argument".to_owned(), |arg| format!("'{arg}'"));
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {arg}: {reason}\n"),
            )
            .with_cmd(command)
        };

        let text = value.to_str().ok_or_else(|| refuse("not valid UTF-8"))?;
        (self.0)(text).map_err(|reason| refuse(&reason))
    }
}

/// A user id as stores take it: 1 to 128 visible ASCII characters, not a key.
fn check_user_id(user: &str) -> Result<String, String> {
    validate_user_id(user).map_err(|error| error.to_string())?;
    Ok(user.to_owned())
}

/// A key name as stores take it: at most 256 bytes, no control characters, not a
/// key.
fn check_key_name(name: &str) -> Result<String, String> {
    validate_new_key(&NewKey::for_user("name-check").name(name))
        .map_err(|error| error.to_string())?;
    Ok(name.to_owned())
}

/// A model id that is not shaped like a key, in any spelling: the ids are logged
/// at start and listed to every caller of `/v1/models`.
fn check_model_id(model: &str) -> Result<String, String> {
    if looks_like_key(model) {
        return Err(
            "this model id looks like an API key; give model names such as \
             `acme/model-1`, and keep keys out of --models and GATEWAY_MODELS"
                .to_owned(),
        );
    }
    Ok(model.to_owned())
}

/// A key id, or the id of a whole key whose checksum is valid; a malformed value is
/// found here, before any database is opened.
fn parse_key_id(text: &str) -> Result<KeyId, String> {
    KeyId::from_id_or_key(text, &KeyFormat::public()).map_err(|error| error.to_string())
}

/// The latest expiry a key can have: 9999-12-31T23:59:59Z. Later times have no
/// RFC 3339 form (it has four-digit years), and stores would cut them silently.
fn latest_expiry() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(253_402_300_799)
}

/// `text` with every `cm-` key in it cut to the form the gateway may show:
/// `cm-<id>_…<last 4>` for a whole, checksum-valid key, `cm-…` for anything else
/// that follows the prefix, and for other spellings of a key (`CM-`,
/// percent-encoded, without the prefix). For text that echoes what a person typed,
/// such as clap's usage errors.
pub(crate) fn redact_keys(text: &str) -> String {
    const PREFIX: &str = "cm-";
    let is_key_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-';
    let format = KeyFormat::public();

    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let run = after.find(|ch| !is_key_char(ch)).unwrap_or(after.len());
        shown.push_str(&cut_keys(&rest[..at]));

        let candidate = &rest[at..at + PREFIX.len() + run];
        match format.parse(candidate) {
            Ok(key) => shown.push_str(&key.redacted().to_string()),
            // The prefix alone (as in "the whole `cm-` key") hides nothing.
            Err(_) if run == 0 => shown.push_str(PREFIX),
            Err(_) => shown.push_str("cm-…"),
        }
        rest = &after[run..];
    }
    shown.push_str(&cut_keys(rest));
    shown
}

/// Reads `<integer><s|m|h|d>`: `90s`, `15m`, `12h`, `30d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    const USAGE: &str = "expected an integer followed by s, m, h or d, such as 30d";

    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at_checked(split).ok_or(USAGE)?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(USAGE.to_owned()),
    };
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(USAGE.to_owned());
    }

    let count: u64 = number.parse().map_err(|_| "the number is too large")?;
    if count == 0 {
        return Err("the duration must be more than zero".to_owned());
    }
    let too_long = || "the key would expire after the year 9999; use a shorter duration".to_owned();
    let duration = count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(too_long)?;
    match SystemTime::now().checked_add(duration) {
        Some(expiry) if expiry <= latest_expiry() => Ok(duration),
        _ => Err(too_long()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit_after_an_integer() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
    }

    #[test]
    fn malformed_durations_are_refused() {
        for text in [
            "",
            "d",
            "10",
            "1.5h",
            "-1d",
            "10w",
            "1 d",
            "0s",
            "é",
            "99999999999999999999d",
            "999999999999d",
            "3000000d",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn expiries_end_with_the_year_9999() {
        // 9999-12-31 is about 2.9 million days after 1970, so 2 million days from
        // now fit and 3 million do not.
        assert!(parse_duration("2000000d").is_ok());
        assert!(
            parse_duration("3000000d")
                .unwrap_err()
                .contains("after the year 9999")
        );
        assert_eq!(
            crate::time::rfc3339(latest_expiry()),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn redaction_keeps_at_most_the_id_and_last_four_of_a_key() {
        let key = KeyFormat::public().generate().unwrap();
        let key = key.expose();
        let text = format!("error: unexpected argument '{key}' found");

        let shown = redact_keys(&text);

        let expected = format!("cm-{}_…{}", &key[3..15], &key[key.len() - 4..]);
        assert_eq!(
            shown,
            format!("error: unexpected argument '{expected}' found")
        );
        assert_eq!(
            redact_keys("'cm-AAAA_mistyped' and cm-x-y, `cm-` key"),
            "'cm-…' and cm-…, `cm-` key"
        );
        assert_eq!(redact_keys("no keys here"), "no keys here");
        assert_eq!(
            redact_keys(&format!("'CM-{}' and '{}'", &key[3..], &key[3..])),
            "'cm-…' and 'cm-…'"
        );
    }

    #[test]
    fn user_ids_and_names_are_checked_as_stores_check_them() {
        let key = KeyFormat::public().generate().unwrap();

        assert!(check_user_id("alice").is_ok());
        for bad in ["", "has space", "tab\there", &"u".repeat(129), key.expose()] {
            assert!(check_user_id(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_key_name("my laptop").is_ok());
        for bad in ["line\nbreak", &"n".repeat(257), key.expose()] {
            assert!(check_key_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            !check_user_id(key.expose())
                .unwrap_err()
                .contains(key.expose())
        );
    }
}
