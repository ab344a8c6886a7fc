//! `keys …` and `users …`: key management from the command line.
//!
//! A new key goes, alone, to standard output; everything else a person reads goes to
//! standard error. Failures come back as one-line messages for `main` to print.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crossmodel_auth::{
    KeyId, KeyManager, KeyRecord, KeyState, NewKey, StoreError, StoreErrorKind, UserRecord,
};
use serde_json::json;

use crate::cli::{KeysCommand, UsersCommand};
use crate::time::rfc3339;

/// Runs a `keys` command.
pub(crate) async fn run_keys(store: &impl KeyManager, command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create {
            user,
            name,
            expires_in,
        } => create(store, user, name, expires_in).await,
        KeysCommand::List { json } => list_keys(store, json).await,
        KeysCommand::Disable(arg) => {
            let id = arg.key;
            let result = store.disable_key(&id).await;
            report(result, "disable", id, "disabled")
        }
        KeysCommand::Enable(arg) => {
            let id = arg.key;
            let result = store.enable_key(&id).await;
            report(result, "enable", id, "enabled")
        }
        KeysCommand::Revoke(arg) => {
            let id = arg.key;
            let result = store.revoke_key(&id).await;
            report(result, "revoke", id, "revoked")
        }
        KeysCommand::Delete(arg) => {
            let id = arg.key;
            let result = store.delete_key(&id).await;
            report(result, "delete", id, "deleted")
        }
    }
}

/// Runs a `users` command.
pub(crate) async fn run_users(
    store: &impl KeyManager,
    command: UsersCommand,
) -> Result<(), String> {
    let (result, user, done) = match command {
        UsersCommand::List { json } => return list_users(store, json).await,
        UsersCommand::Disable(arg) => (store.disable_user(&arg.user).await, arg.user, "disabled"),
        UsersCommand::Enable(arg) => (store.enable_user(&arg.user).await, arg.user, "enabled"),
    };

    match result {
        Ok(()) => {
            eprintln!("user {user} {done}");
            Ok(())
        }
        Err(error) if error.kind() == StoreErrorKind::NotFound => Err(format!(
            "no user {}; `users list` shows the users",
            shown_user(&user)
        )),
        Err(error) => Err(format!(
            "cannot change user {}: {}",
            shown_user(&user),
            describe(&error)
        )),
    }
}

async fn create(
    store: &impl KeyManager,
    user: String,
    name: Option<String>,
    expires_in: Option<Duration>,
) -> Result<(), String> {
    let mut new = NewKey::for_user(user).name(name.unwrap_or_default());
    if let Some(expires_in) = expires_in {
        let at = SystemTime::now()
            .checked_add(expires_in)
            .ok_or("--expires-in is too long")?;
        new = new.expires_at(at);
    }

    let created = store
        .create_key(new)
        .await
        .map_err(|error| format!("cannot create the key: {}", describe(&error)))?;

    // The plaintext goes to standard output alone, so `$(gateway keys create …)`
    // captures exactly the key.
    let record = &created.record;
    print_out(created.key.expose())
        .map_err(|error| format!("{error}; key {} was created anyway, revoke it", record.id))?;
    let expiry = record.expires_at.map_or_else(
        || "never expires".to_owned(),
        |at| format!("expires {}", rfc3339(at)),
    );
    eprintln!(
        "created key {} for user {} ({expiry}); it is shown only this once, so store it now",
        record.id, record.user_id
    );
    Ok(())
}

async fn list_keys(store: &impl KeyManager, as_json: bool) -> Result<(), String> {
    let keys = store
        .list_keys()
        .await
        .map_err(|error| format!("cannot list keys: {}", describe(&error)))?;
    let now = SystemTime::now();

    if as_json {
        let rows: Vec<_> = keys.iter().map(|key| key_json(key, now)).collect();
        return print_out(&serde_json::Value::Array(rows).to_string());
    }

    let rows = keys.iter().map(|key| {
        [
            key.id.to_string(),
            key.name.clone(),
            key.user_id.clone(),
            shown_state(key, now).to_owned(),
            key.expires_at.map_or_else(|| "never".to_owned(), rfc3339),
            key.last_used_at.map_or_else(|| "never".to_owned(), rfc3339),
        ]
    });
    print_table(
        ["ID", "NAME", "USER", "STATE", "EXPIRES", "LAST USED"],
        rows,
    )
}

async fn list_users(store: &impl KeyManager, as_json: bool) -> Result<(), String> {
    let users = store
        .list_users()
        .await
        .map_err(|error| format!("cannot list users: {}", describe(&error)))?;

    if as_json {
        let rows: Vec<_> = users.iter().map(user_json).collect();
        return print_out(&serde_json::Value::Array(rows).to_string());
    }

    let rows = users.iter().map(|user| {
        [
            user.id.clone(),
            user.state.to_string(),
            user.key_count.to_string(),
        ]
    });
    print_table(["USER", "STATE", "KEYS"], rows)
}

fn key_json(key: &KeyRecord, now: SystemTime) -> serde_json::Value {
    json!({
        "id": key.id.as_str(),
        "name": key.name,
        "user": key.user_id,
        "state": key.state.as_str(),
        "expired": key.is_expired_at(now),
        "user_state": key.user_state.as_str(),
        "created_at": rfc3339(key.created_at),
        "expires_at": key.expires_at.map(rfc3339),
        "last_used_at": key.last_used_at.map(rfc3339),
    })
}

fn user_json(user: &UserRecord) -> serde_json::Value {
    json!({
        "id": user.id,
        "state": user.state.as_str(),
        "keys": user.key_count,
    })
}

/// The state a person needs to see: an active key past its expiry reads `expired`.
fn shown_state(key: &KeyRecord, now: SystemTime) -> &'static str {
    if key.state == KeyState::Active && key.is_expired_at(now) {
        "expired"
    } else {
        key.state.as_str()
    }
}

fn print_table<const N: usize>(
    header: [&str; N],
    rows: impl Iterator<Item = [String; N]>,
) -> Result<(), String> {
    let rows: Vec<[String; N]> = rows.collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let line = |cells: [&str; N]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![line(header)];
    lines.extend(
        rows.iter()
            .map(|row| line(row.each_ref().map(String::as_str))),
    );
    print_out(&lines.join("\n"))
}

/// Writes `text` and a newline to standard output. A closed pipe (`| head`) is an
/// error to report, not a reason to panic as `println!` would.
pub(crate) fn print_out(text: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("cannot write to standard output: {error}"))
}

/// A user id as messages show it: a key pasted in the wrong place is not echoed.
fn shown_user(user: &str) -> String {
    if user.starts_with("cm-") || user.chars().any(char::is_control) {
        format!("({} characters, not a user id)", user.chars().count())
    } else {
        format!("`{user}`")
    }
}

fn report(result: Result<(), StoreError>, verb: &str, id: KeyId, done: &str) -> Result<(), String> {
    match result {
        Ok(()) => {
            eprintln!("key {id} {done}");
            Ok(())
        }
        Err(error) if error.kind() == StoreErrorKind::NotFound => {
            Err(format!("no key with id {id}; `keys list` shows the ids"))
        }
        // The store's own message names the key and the way out.
        Err(error) if error.kind() == StoreErrorKind::Conflict => Err(describe(&error)),
        Err(error) => Err(format!("cannot {verb} key {id}: {}", describe(&error))),
    }
}

/// A store error on one line: its message and the causes beneath it.
pub(crate) fn describe(error: &StoreError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}
