//! The `switchyard` command: `serve` runs the bridge, `check` validates its files.
//! Parses arguments and calls the library; nothing else lives here.

use std::path::PathBuf;
use std::process::ExitCode;

mod cli;

/// jemalloc with background purging: memory freed when streams end goes back to the system
/// within seconds (glibc's arenas kept it), and long-lived fragmentation stays low.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard::config::Config;
use switchyard::flags::Flags;
use switchyard::problem::Problem;
use switchyard::routes::Routes;
use switchyard::{Bridge, server};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A migration bridge from Socket.IO to HTTP streaming (NDJSON and SSE)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (HTTP and Socket.IO on one port).
    Serve {
        /// Config file (default: switchyard.toml when it exists).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding the config (e.g. 127.0.0.1:9000).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Once listening, write the bound address here as JSON (`{"listen", "url",
        /// "pid"}`), atomically (a temporary file renamed); removed when the bridge stops.
        /// For supervisors and tests that bind port 0.
        #[arg(long, value_name = "PATH", env = "SWITCHYARD_READY_FILE")]
        ready_file: Option<PathBuf>,
    },
    /// Validate the config, routes and flags; list every problem and exit non-zero if any.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show or change per-route transport flags through the bridge's admin API.
    Flags {
        #[command(flatten)]
        conn: FlagsConn,
        #[command(subcommand)]
        command: FlagsCmd,
    },
}

#[derive(clap::Args)]
#[command(next_help_heading = "Admin API")]
struct FlagsConn {
    /// Base URL of the bridge.
    #[arg(long, global = true, env = "SWITCHYARD_URL", default_value = cli::flags::DEFAULT_URL)]
    url: String,
    /// Admin bearer token (prefer the environment variable).
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Name recorded in the audit log (sent as x-actor).
    #[arg(long, global = true, env = "SWITCHYARD_ACTOR")]
    actor: Option<String>,
    /// Print the raw JSON answer, for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum FlagsCmd {
    /// Every route's flag table, the flags version and the last reload result.
    List,
    /// Replace a route's whole flag table (absent options take their defaults).
    Set(cli::flags::SetArgs),
    /// Kill switch: put a route back to legacy (Socket.IO) at once.
    Rollback {
        /// Route name, as in routes.toml.
        route: String,
    },
    /// Recent flag changes, newest first.
    History {
        /// How many entries to show (server default when absent)
        #[arg(long, value_name = "N")]
        limit: Option<String>,
    },
}

fn flags(conn: FlagsConn, command: FlagsCmd) -> anyhow::Result<ExitCode> {
    use cli::flags::FlagsCommand;
    let cmd = match command {
        FlagsCmd::List => FlagsCommand::List,
        FlagsCmd::Set(args) => FlagsCommand::Set(args),
        FlagsCmd::Rollback { route } => FlagsCommand::Rollback { route },
        FlagsCmd::History { limit } => FlagsCommand::History { limit },
    };
    let opts = cli::flags::ClientOptions {
        url: conn.url,
        token: conn.token,
        actor: conn.actor,
        json: conn.json,
    };
    println!("{}", cli::flags::run_blocking(&opts, &cmd)?);
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            ready_file,
        } => serve(config, listen, ready_file),
        Command::Check { config } => check(config),
        Command::Flags { conn, command } => flags(conn, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(config: Option<PathBuf>) -> anyhow::Result<(Config, Routes)> {
    let config = Config::load(config.as_deref())?;
    let routes = Routes::load(&config.routes_file)?;
    Ok((config, routes))
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    ready_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (mut config, routes) = load(config)?;
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Everything is validated (config, routes, and the flags against the routes) before
        // the port is bound: a bridge that says it listens is one that serves.
        let listen = config.listen;
        let bridge = Bridge::new(config, routes)?;
        let listener = server::bind(listen).with_context(|| {
            format!("cannot listen on {listen} (set `listen` or SWITCHYARD_LISTEN)")
        })?;
        let addr = listener.local_addr()?;
        for r in bridge.routes().iter() {
            let sio = r
                .socketio
                .as_ref()
                .map(|s| format!(", Socket.IO `{}` on {}", s.request_event, s.namespace))
                .unwrap_or_default();
            tracing::info!(
                "route {}: POST {}{sio} ({} engine)",
                r.name,
                r.http.path,
                r.engine.kind()
            );
        }
        tracing::info!("switchyard listening on http://{addr} (Socket.IO at /socket.io/)");
        if let Some(path) = &ready_file {
            write_ready_file(path, addr)
                .with_context(|| format!("cannot write the ready file {}", path.display()))?;
        }
        // The accept loop runs on a worker, not on this thread: connection tasks it spawns
        // then start on that worker's own queue (next in line) instead of the shared
        // queue a busy worker looks at only now and then.
        let served = tokio::spawn(server::run(listener, bridge, shutdown_signal()))
            .await
            .context("the accept loop stopped unexpectedly");
        if let Some(path) = &ready_file {
            let _ = std::fs::remove_file(path);
        }
        served??;
        tracing::info!("switchyard stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Writes `{"listen", "url", "pid"}` to `path` through a temporary file in the same
/// directory and a rename, so a reader sees either nothing or the whole document.
fn write_ready_file(path: &std::path::Path, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let doc = serde_json::json!({
        "listen": addr.to_string(),
        "url": format!("http://{addr}"),
        "pid": std::process::id(),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received: draining"),
        _ = term => tracing::info!("SIGTERM received: draining"),
    }
}

/// This machine's memory (Linux `/proc/meminfo`), when it can be read.
fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn check(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Every file is read, whatever the others hold, and every problem listed in one shape.
    let mut problems: Vec<Problem> = Vec::new();
    let config = match Config::read(config.as_deref()) {
        Ok((config, list)) => {
            problems.extend(list);
            config
        }
        Err(e) => {
            problems.extend(e.list);
            Config::default()
        }
    };
    let routes = Routes::load(&config.routes_file)
        .map_err(|e| problems.extend(e.list))
        .ok();
    let flags = config.flags_file();
    let shown = flags.display().to_string();
    match std::fs::read_to_string(&flags) {
        Ok(text) => {
            let names: Vec<&str> = routes
                .as_ref()
                .map(|r| r.iter().map(|r| &*r.name).collect())
                .unwrap_or_default();
            if let Err(e) = Flags::parse_toml(&text, &names) {
                problems.extend(e.in_file(&shown).list);
            }
        }
        Err(e) => {
            problems.push(Problem::new(format!("cannot read the flags file: {e}")).in_file(&shown))
        }
    }
    if problems.is_empty() {
        let n = routes.map(|r| r.len()).unwrap_or(0);
        println!(
            "ok: config, {n} routes ({}) and flags ({}) are valid",
            config.routes_file.display(),
            flags.display()
        );
        if let Some(url) = &config.cluster.redis_url {
            // The URL's password (if any) is not printed.
            let host = url.rsplit('@').next().unwrap_or(url);
            println!(
                "cluster: node {} on Redis {host} (keys under `{}:`)",
                config
                    .cluster
                    .node_id
                    .as_deref()
                    .unwrap_or("(made up at start)"),
                config.cluster.key_prefix
            );
        }
        let worst = config.worst_case();
        println!("{worst}");
        if let Some(machine) = machine_memory()
            && worst.total() > machine
        {
            println!(
                "warning: the worst case is more than this machine's memory ({:.1} MiB): lower limits.max_live_bytes, replay.max_total_bytes or limits.max_connections before a client finds it",
                machine as f64 / (1024.0 * 1024.0)
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} problem{} found:",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
