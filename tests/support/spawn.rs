//! The real `switchyard serve` binary on an ephemeral port, for tests where memory, tasks,
//! signals, the log or the exit code must be the process's own.
//!
//! The port is learned from the ready file (`serve --ready-file`), which the bridge writes
//! atomically once it listens: no log text is parsed.
//!
//! ```ignore
//! let mut bridge = Spawn::new().env("SWITCHYARD_SHUTDOWN__GRACE_SECS", 2).start().await;
//! // ... drive bridge.url(CHAT) ...
//! bridge.sigterm();
//! assert_eq!(bridge.exit_within(Duration::from_secs(15)).await.code(), Some(0));
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{WAIT, eventually, repo, shipped_flags_dir};

/// How to start the binary: `serve` in a fresh directory, on `127.0.0.1:0`, with the
/// shipped routes and a fresh copy of the shipped flags, unless `env` says otherwise.
pub struct Spawn {
    env: Vec<(String, String)>,
    dir: Option<PathBuf>,
    log_filter: String,
    capture: bool,
}

impl Default for Spawn {
    fn default() -> Self {
        Spawn::new()
    }
}

impl Spawn {
    pub fn new() -> Spawn {
        Spawn {
            env: vec![
                (
                    "SWITCHYARD_ROUTES_FILE".into(),
                    repo().join("routes.toml").display().to_string(),
                ),
                (
                    "SWITCHYARD_FLAGS_DIR".into(),
                    shipped_flags_dir().display().to_string(),
                ),
            ],
            dir: None,
            log_filter: "warn,switchyard=info".into(),
            capture: false,
        }
    }

    /// Sets an environment variable of the process (`SWITCHYARD_*` settings override the
    /// defaults above).
    pub fn env(mut self, key: &str, value: impl ToString) -> Spawn {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs it in `dir` instead of a fresh directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Spawn {
        self.dir = Some(dir.into());
        self
    }

    /// The `RUST_LOG` filter (default `warn,switchyard=info`).
    pub fn log(mut self, filter: &str) -> Spawn {
        self.log_filter = filter.to_string();
        self
    }

    /// Keeps everything it writes on stdout and stderr, for [`Process::output`]. Otherwise
    /// stdout is dropped and stderr goes to the test's own.
    pub fn capture_output(mut self) -> Spawn {
        self.capture = true;
        self
    }

    /// Starts it and waits (at most `WAIT`) until it listens; fails the test if it exits
    /// first.
    pub async fn start(self) -> Process {
        let dir = match self.dir {
            Some(d) => d,
            None => tempfile::tempdir().unwrap().keep(),
        };
        let ready = tempfile::tempdir().unwrap().keep().join("ready.json");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(&dir)
            .env("RUST_LOG", &self.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.capture {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        }
        let mut child = cmd.spawn().unwrap();
        let output: Arc<Mutex<String>> = Arc::default();
        let mut readers = Vec::new();
        if self.capture {
            readers.push(collect(child.stdout.take().unwrap(), output.clone()));
            readers.push(collect(child.stderr.take().unwrap(), output.clone()));
        }
        eventually("switchyard listens (its ready file)", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "switchyard exited ({status}) before listening: {}",
                    output.lock().unwrap()
                );
            }
            ready.exists()
        })
        .await;
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        let addr: SocketAddr = doc["listen"].as_str().unwrap().parse().unwrap();
        let pid = child.id().unwrap();
        assert_eq!(doc["pid"], pid, "the ready file is this process's: {doc}");
        Process {
            child,
            addr,
            pid,
            ready,
            output,
            readers,
        }
    }
}

/// Appends every line of `from` to `into`.
fn collect(
    from: impl AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = into.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    })
}

/// A running bridge process (killed if dropped while running).
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// The ready file it wrote (it removes it when it stops).
    pub ready: PathBuf,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// `http://<addr>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM (a graceful drain).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid);
    }

    /// Waits for it to exit, failing the test after `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("switchyard still runs {limit:?} later"))
            .unwrap()
    }

    /// Kills it at once.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Everything it wrote on stdout and stderr (with [`Spawn::capture_output`]), once it
    /// has exited and its pipes are closed.
    pub async fn output(&mut self) -> String {
        for reader in self.readers.drain(..) {
            tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        }
        self.output.lock().unwrap().clone()
    }
}
