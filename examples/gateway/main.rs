//! An LLM gateway that authenticates every request with a `cm-` API key.
//!
//! ```text
//! gateway [--db URL] serve [--listen ADDR]
//! gateway [--db URL] keys create --user USER [--name NAME] [--expires-in DUR]
//! gateway [--db URL] keys list [--json]
//! gateway [--db URL] keys disable|enable|revoke|delete KEY_ID_OR_KEY
//! gateway [--db URL] users list [--json]
//! gateway [--db URL] users disable|enable USER
//! ```
//!
//! The database is `--db`, else `CROSSMODEL_DB`, else `sqlite://gateway.db`. With no
//! upstream configured, a built-in echo model answers in the OpenAI and Anthropic
//! response shapes. See `examples/gateway/README.md` for a walk-through.
//!
//! Exit status: 0 on success, 1 with a one-line message on standard error when
//! something is wrong, 2 for a usage error.

mod anthropic;
mod cli;
mod connections;
mod echo;
mod errors;
mod ids;
mod keys;
mod models;
mod openai;
mod serve;
mod sse;
mod store;
mod time;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use crossmodel_auth::StoreError;
use crossmodel_auth::store::{PostgresKeyStore, SqliteKeyStore};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, redact_keys};
use crate::store::{Backend, Database, cannot_open, cut_keys};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    init_logs(&cli.command);

    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // Messages may quote the database URL or the driver's view of it, which
        // may hold a key pasted into the wrong place.
        Err(message) => {
            eprintln!("error: {}", cut_keys(&message));
            ExitCode::FAILURE
        }
    }
}

/// Prints what clap has to say and gives its exit status: help and version on
/// standard output (0), usage errors on standard error (2). Usage errors echo what
/// was typed, which may be a key (`keys disable KEY1 KEY2`), so every key in them is
/// cut first.
fn usage_error(error: &clap::Error) -> ExitCode {
    let code = u8::try_from(error.exit_code()).unwrap_or(2);
    if error.use_stderr() {
        eprint!("{}", redact_keys(&error.render().to_string()));
    } else if let Err(print_error) = error.print() {
        eprintln!("error: cannot write to standard output: {print_error}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(code)
}

async fn run(cli: Cli) -> Result<(), String> {
    let backend = Backend::of(&cli.db)?;
    let failed = |error: StoreError| cannot_open(&cli.db, backend, &error);

    match backend {
        Backend::Sqlite => {
            let store = SqliteKeyStore::open(&cli.db).await.map_err(failed)?;
            run_on(store, cli.command).await
        }
        Backend::Postgres => {
            let store = PostgresKeyStore::connect(&cli.db).await.map_err(failed)?;
            run_on(store, cli.command).await
        }
    }
}

async fn run_on(store: impl Database, command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => serve::run(store, args).await,
        Command::Keys(command) => keys::run_keys(&store, command).await,
        Command::Users(command) => keys::run_users(&store, command).await,
    }
}

/// Logs go to standard error (standard output is for keys and listings); `RUST_LOG`
/// sets the level: `info` for the server, `warn` for the other commands.
fn init_logs(command: &Command) {
    let default = match command {
        Command::Serve(_) => "info",
        Command::Keys(_) | Command::Users(_) => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));

    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
