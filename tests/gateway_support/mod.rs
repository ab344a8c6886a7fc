//! Runs the example gateway as a user would: the real binary, in a temporary
//! directory, spoken to over HTTP on loopback.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long anything a test waits for may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The gateway binary, built once per test process unless `cargo test` has just
/// built it (it does for a whole-suite run): then no second cargo runs beside it.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // tests run from target/<profile>/deps/; examples live beside deps/.
        let test_binary = std::env::current_exe().expect("the test knows its path");
        let profile_dir = test_binary
            .parent()
            .and_then(Path::parent)
            .expect("the test binary sits in target/<profile>/deps");
        let binary = profile_dir.join("examples").join("gateway");

        if !is_newer_than_sources(&binary) {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--all-features", "--example", "gateway"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the gateway example failed");
        }
        assert!(binary.exists(), "no gateway binary at {}", binary.display());
        binary
    })
}

/// Whether `binary` was built after the last change to anything it is built from.
fn is_newer_than_sources(binary: &Path) -> bool {
    let Ok(built) = binary.metadata().and_then(|meta| meta.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = ["src", "examples/gateway", "Cargo.toml", "Cargo.lock"];
    sources
        .iter()
        .all(|source| newest_change(&root.join(source)).is_some_and(|changed| changed < built))
}

/// The latest modification time under `path` (a file or a directory tree).
fn newest_change(path: &Path) -> Option<std::time::SystemTime> {
    let meta = path.metadata().ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).ok()?.flatten() {
            newest = newest.max(newest_change(&entry.path())?);
        }
    }
    Some(newest)
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "crossmodel-gateway-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The SQLite URL of a database file in this directory.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.join("gateway.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway command in `dir`, with no database chosen from the environment.
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(dir)
        .env_remove("CROSSMODEL_DB")
        .env_remove("GATEWAY_MODELS")
        .env_remove("RUST_LOG");
    command
}

/// What a command-line run gave.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `gateway --db <db> <args>` in `dir` and waits for it.
pub fn cli(dir: &Path, db: &str, args: &[&str]) -> Run {
    let output: Output = command(dir)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("the gateway runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `command` with its output captured, killing it if it has not ended within
/// [`DEADLINE`] (then `code` is `None`): for commands that should fail at once but
/// would run on, such as a `serve` that ought to refuse its arguments.
pub fn run_within_deadline(command: &mut Command) -> Run {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway runs");

    let start = Instant::now();
    let ended = loop {
        if child.try_wait().expect("wait").is_some() {
            break true;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("the output is read");
    Run {
        code: output.status.code().filter(|_| ended),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Creates a key with the command line and returns it.
pub fn create_key(dir: &Path, db: &str, user: &str) -> String {
    let run = cli(dir, db, &["keys", "create", "--user", user]);
    assert_eq!(run.code, Some(0), "keys create failed: {}", run.stderr);
    run.stdout.trim().to_owned()
}

/// A running `gateway serve`, stopped when dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `gateway [--db db] serve --listen 127.0.0.1:0` in `dir` and waits until
    /// it listens.
    pub fn start(dir: &Path, db: Option<&str>) -> Self {
        Self::start_with(dir, db, &[], &[])
    }

    /// Like [`Server::start`], with more `serve` arguments and environment.
    pub fn start_with(
        dir: &Path,
        db: Option<&str>,
        serve_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Starting::spawn(dir, db, serve_args, env).ready()
    }

    /// Starts `count` servers on one database at the same moment, as replicas do.
    pub fn start_together(count: usize, dir: &Path, db: &str) -> Vec<Self> {
        let starting: Vec<Starting> = (0..count)
            .map(|_| Starting::spawn(dir, Some(db), &[], &[]))
            .collect();
        starting.into_iter().map(Starting::ready).collect()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// What the server printed on standard output so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout").clone()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn terminate(self) -> ExitStatus {
        self.stop_with("-TERM")
    }

    /// Sends `signal` (`-TERM`, `-INT`) and waits for the process to end.
    pub fn stop_with(mut self, signal: &str) -> ExitStatus {
        self.stop_within(signal, DEADLINE)
    }

    /// Sends `signal` and waits up to `deadline` for the process to end; the log
    /// stays readable afterwards.
    pub fn stop_within(&mut self, signal: &str, deadline: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());

        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "the gateway did not end within {deadline:?} of {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process that may not listen yet.
struct Starting {
    // Taken by `ready`; killed on drop otherwise.
    child: Option<Child>,
    address: mpsc::Receiver<SocketAddr>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Starting {
    fn spawn(dir: &Path, db: Option<&str>, serve_args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = command(dir);
        if let Some(db) = db {
            command.arg("--db").arg(db);
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(serve_args)
            .env("RUST_LOG", "info,crossmodel_auth=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway starts");

        let stdout = collect(child.stdout.take().expect("piped"), None);
        let (address_tx, address) = mpsc::channel();
        let stderr = collect(child.stderr.take().expect("piped"), Some(address_tx));
        Self {
            child: Some(child),
            address,
            stdout,
            stderr,
        }
    }

    /// Waits until the server listens.
    fn ready(mut self) -> Server {
        let Ok(address) = self.address.recv_timeout(DEADLINE) else {
            let log = self.stderr.lock().expect("log").clone();
            panic!("the gateway did not listen within {DEADLINE:?}; its log:\n{log}");
        };
        Server {
            child: self.child.take().expect("ready is called once"),
            address,
            stdout: Arc::clone(&self.stdout),
            stderr: Arc::clone(&self.stderr),
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads a pipe line by line into a shared string; reports the address of the
/// "listening on http://…" line.
fn collect(
    pipe: impl Read + Send + 'static,
    address: Option<mpsc::Sender<SocketAddr>>,
) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);

    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(rest)) = (&address, line.split("listening on http://").nth(1)) {
                if let Some(Ok(parsed)) = rest.split_whitespace().next().map(str::parse) {
                    let _ = tx.send(parsed);
                }
            }
            let mut sink = sink.lock().expect("sink");
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    text
}

/// An HTTP response, body decoded from chunks.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request over a fresh connection and reads the whole answer.
pub fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");

    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send");

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("receive");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();

    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `text` looks like a whole key: `cm-`, 12 id characters, `_`, 28 more.
pub fn is_key(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("cm-") else {
        return false;
    };
    let bytes = rest.as_bytes();
    bytes.len() == 41
        && bytes[12] == b'_'
        && bytes
            .iter()
            .enumerate()
            .all(|(index, byte)| index == 12 || byte.is_ascii_alphanumeric())
}

/// A database of its own on the PostgreSQL server at `DATABASE_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`), dropped when the value is.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl ScratchDatabase {
    pub fn create() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!(
            "gateway_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );

        psql(
            &admin_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = Self::url_of(&admin_url, &name, None);
        Self {
            admin_url,
            name,
            url,
        }
    }

    /// The URL of this database reached through `port` instead.
    pub fn url_through(&self, port: u16) -> String {
        Self::url_of(&self.admin_url, &self.name, Some(port))
    }

    fn url_of(admin_url: &str, name: &str, port: Option<u16>) -> String {
        let without_query = admin_url.split('?').next().unwrap_or(admin_url);
        let (server, _) = without_query.rsplit_once('/').expect("a database URL");
        let server = match port {
            Some(port) => {
                let (userinfo, host) = server.rsplit_once('@').unwrap_or(("postgres:/", server));
                let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
                format!("{userinfo}@{host}:{port}")
            }
            None => server.to_owned(),
        };
        format!("{server}/{name}")
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([&self.admin_url, "-qc", &sql])
            .output();
    }
}

fn psql(url: &str, sql: &str) {
    let output = Command::new("psql")
        .args([url, "-qc", sql])
        .output()
        .expect("psql is installed");
    assert!(
        output.status.success(),
        "PostgreSQL at DATABASE_URL is unreachable ({}); run scripts/services-up",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A TCP forwarder on loopback that a test can cut and restore, to take a
/// database away from a running server.
pub struct Proxy {
    pub port: u16,
    open: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));

        let (accepting, tracked) = (Arc::clone(&open), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !accepting.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                forward(client, server, &tracked);
            }
        });
        Self {
            port,
            open,
            connections,
        }
    }

    /// Drops every connection and refuses new ones, as a dead server would.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self.connections.lock().expect("connections").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn forward(client: TcpStream, server: TcpStream, tracked: &Arc<Mutex<Vec<TcpStream>>>) {
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    {
        let mut tracked = tracked.lock().expect("connections");
        tracked.extend(client.try_clone());
        tracked.extend(server.try_clone());
    }
    for pair in pairs {
        if let (Ok(mut from), Ok(mut to)) = pair {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
        }
    }
}
