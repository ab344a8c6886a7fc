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

/// The gateway binary, built once per test process.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--all-features", "--example", "gateway"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the gateway example failed");

        // tests run from target/<profile>/deps/; examples live beside deps/.
        let test_binary = std::env::current_exe().expect("the test knows its path");
        let profile_dir = test_binary
            .parent()
            .and_then(Path::parent)
            .expect("the test binary sits in target/<profile>/deps");
        let binary = profile_dir.join("examples").join("gateway");
        assert!(binary.exists(), "no gateway binary at {}", binary.display());
        binary
    })
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
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = collect(child.stderr.take().expect("piped"), Some(address_tx));

        let address = match address_rx.recv_timeout(DEADLINE) {
            Ok(address) => address,
            Err(_) => {
                let _ = child.kill();
                let log = stderr.lock().expect("log").clone();
                panic!("the gateway did not listen within {DEADLINE:?}; its log:\n{log}");
            }
        };
        Self {
            child,
            address,
            stdout,
            stderr,
        }
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
            assert!(start.elapsed() < DEADLINE, "the gateway ignored {signal}");
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
