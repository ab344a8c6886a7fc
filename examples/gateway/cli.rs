//! The command line: `gateway [--db URL] serve|keys|users …`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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

    /// The models the echo model answers for, comma-separated.
    #[arg(
        long,
        env = "GATEWAY_MODELS",
        value_delimiter = ',',
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
        /// The user who owns the key (created if new).
        #[arg(long, value_name = "USER")]
        user: String,

        /// A name to recognise the key by in listings.
        #[arg(long, value_name = "NAME")]
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
    #[arg(value_name = "KEY_ID_OR_KEY")]
    pub(crate) key: String,
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
    #[arg(value_name = "USER")]
    pub(crate) user: String,
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
    count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| "the duration is too long".to_owned())
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
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} was accepted");
        }
    }
}
