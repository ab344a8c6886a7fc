//! A minimal axum server for `scripts/bench-http`: one route returning a small JSON
//! body, with or without `ApiKeyLayer`, on one Tokio thread.
//!
//! ```text
//! bench_server MODE PORT [DB_URL]
//!   MODE: bare | noop-layer | memory | cache-sqlite | cache-postgres
//! ```
//!
//! Listens on 127.0.0.1:PORT only. Creates one key (plus others, so lookups search
//! a realistic table) and prints it, alone, on standard output, then
//! `ready` on standard error once it accepts connections. The keys are throwaway
//! benchmark keys in a store this process made.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use crossmodel_auth::{
    ApiKeyLayer, CachedKeyStore, KeyManager, KeyStore, MemoryKeyStore, NewKey, PostgresKeyStore,
    SqliteKeyStore,
};

/// Other keys in the memory store, so lookups search a realistic table. Database
/// stores get fewer (each is a durable write); their hits come from the cache.
const OTHER_KEYS: usize = 9_999;
const OTHER_DB_KEYS: usize = 99;

const BODY: &str = r#"{"object":"list","data":[{"id":"echo-1","object":"model"}]}"#;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: bench_server bare|noop-layer|memory|cache-sqlite|cache-postgres PORT [DB_URL]";
    let mode = args.next().ok_or(usage)?;
    let port: u16 = args.next().ok_or(usage)?.parse()?;
    let db = args.next();

    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(&mode, port, db.as_deref()))
}

async fn serve(mode: &str, port: u16, db: Option<&str>) -> Result<(), Box<dyn Error>> {
    let json = [(CONTENT_TYPE, "application/json")];
    let routes = Router::new().route("/v1/models", get(move || async move { (json, BODY) }));
    let app = match mode {
        "bare" => {
            println!("none");
            routes
        }
        // Any tower layer on an axum router costs a boxed service and a mapped
        // response; this one does nothing else, so it shows that share.
        "noop-layer" => {
            println!("none");
            routes.layer(tower::layer::util::Identity::new())
        }
        "memory" => guarded(routes, MemoryKeyStore::new(), OTHER_KEYS).await?,
        "cache-sqlite" => {
            let url = db.ok_or("cache-sqlite needs a sqlite:// URL")?;
            let store = CachedKeyStore::new(SqliteKeyStore::open(url).await?);
            guarded(routes, store, OTHER_DB_KEYS).await?
        }
        "cache-postgres" => postgres(routes, db).await?,
        _ => return Err(format!("unknown mode {mode:?}").into()),
    };

    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(address).await?;
    eprintln!("ready");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Fills `store` with keys, prints the one the load generator sends, and guards
/// `routes` with it.
async fn guarded<K>(routes: Router, store: K, others: usize) -> Result<Router, Box<dyn Error>>
where
    K: KeyStore + KeyManager + Clone,
{
    let key = store.create_key(NewKey::for_user("bench")).await?.key;
    for index in 0..others {
        store
            .create_key(NewKey::for_user(format!("user-{index}")))
            .await?;
    }

    println!("{}", key.expose());
    Ok(routes.layer(ApiKeyLayer::new(store)))
}

async fn postgres(routes: Router, db: Option<&str>) -> Result<Router, Box<dyn Error>> {
    let url = db.ok_or("cache-postgres needs a postgres:// URL")?;
    let store = CachedKeyStore::new(PostgresKeyStore::connect(url).await?);
    guarded(routes, store, OTHER_DB_KEYS).await
}
