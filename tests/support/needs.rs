//! What some tests need from outside Rust: the real Socket.IO clients (`tests/interop`,
//! installed by `scripts/interop-setup`), Prometheus (the dashboard check) and
//! `redis-server` (the cluster tests). When one is missing, the run stops at the first
//! test that needs it with one line saying what to install (`scripts/test` installs
//! everything), rather than a failure per test; the cluster tests are skipped instead,
//! unless `SWITCHYARD_REQUIRE_REDIS` says they must run, and so are the load-balancer
//! tests (`haproxy`, `nginx`), unless `SWITCHYARD_REQUIRE_BALANCERS` says they must.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::repo;

/// Node.js and the Node clients (socket.io-client 4.x and 2.x).
pub fn node_clients() {
    need(
        on_path("node") && repo().join("tests/interop/node_modules").is_dir(),
        "the Node Socket.IO clients are not installed (tests/interop/node_modules): run scripts/interop-setup (needs node and npm)",
    );
}

/// Node.js itself (the `fetch` client of `tests/interop/http_client.js`).
pub fn node() {
    need(
        on_path("node"),
        "Node.js is not on PATH: install Node.js 18 or later (with npm)",
    );
}

/// python-socketio in `tests/interop/.venv`.
pub fn python_client() {
    need(
        repo().join("tests/interop/.venv/bin/python").exists(),
        "the Python Socket.IO client is not installed (tests/interop/.venv): run scripts/interop-setup (needs python3)",
    );
}

/// `prometheus` and `promtool`.
pub fn prometheus() {
    need(
        on_path("prometheus") && on_path("promtool"),
        "prometheus and promtool are not on PATH (Debian: apt-get install prometheus)",
    );
}

/// `redis-server`: whether the cluster tests can run here. Without it they are skipped
/// (false, with one line saying so), unless `SWITCHYARD_REQUIRE_REDIS` is set: then the
/// run stops as for any other missing need.
pub fn redis() -> bool {
    if on_path("redis-server") {
        return true;
    }
    need(
        std::env::var_os("SWITCHYARD_REQUIRE_REDIS").is_none(),
        "redis-server is required (SWITCHYARD_REQUIRE_REDIS) but not on PATH (Debian: apt-get install redis-server)",
    );
    eprintln!("skipped: redis-server is not installed (scripts/test installs Debian's)");
    false
}

/// `haproxy` (the load-balancer tests): skipped when missing, unless
/// `SWITCHYARD_REQUIRE_BALANCERS` is set.
pub fn haproxy() -> bool {
    balancer("haproxy")
}

/// `nginx` (the load-balancer tests): skipped when missing, unless
/// `SWITCHYARD_REQUIRE_BALANCERS` is set.
pub fn nginx() -> bool {
    balancer("nginx")
}

fn balancer(tool: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    need(
        std::env::var_os("SWITCHYARD_REQUIRE_BALANCERS").is_none(),
        &format!(
            "{tool} is required (SWITCHYARD_REQUIRE_BALANCERS) but not on PATH (Debian: apt-get install {tool})"
        ),
    );
    eprintln!("skipped: {tool} is not installed (scripts/test installs Debian's)");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(tool)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Stops the whole run with `why` (once, however many tests find it at the same time),
/// after killing the processes the tests started.
fn need(ok: bool, why: &str) {
    static STOPPING: Mutex<()> = Mutex::new(());
    if ok {
        return;
    }
    let _stopping = STOPPING.lock();
    // Straight to the process's stderr: the test harness would hide a passing line and
    // bury a failing one.
    let _ = writeln!(
        std::io::stderr(),
        "\nswitchyard tests: {why}; or run scripts/test, which installs everything the tests need."
    );
    kill_children();
    std::process::exit(1);
}

/// Kills this process's children (bridges and clients the running tests started), which
/// `exit` would otherwise leave behind.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let children: Vec<String> = procs
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Fields after the command name: state, ppid, ...
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                    .unwrap_or(false)
            })
        })
        .collect();
    if !children.is_empty() {
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&children)
            .status();
    }
}
