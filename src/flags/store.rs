//! The flags store: the flags in force, the file they come from, and every change to it.
//!
//! Owns `flags_dir/flags.toml` (loaded at start, watched for hand edits, written
//! atomically by the admin API) and `flags_dir/audit.jsonl` (one line per change). The
//! flags in force are read lock-free through a `watch` channel; an invalid edit keeps the
//! last good flags and is reported, never applied. Knows nothing of HTTP.
//!
//! In a cluster the store is also given a [`SharedFlags`] (Redis, behind the cluster
//! module): every change is then a compare-and-set of the shared document first (so
//! `If-Match` holds cluster-wide and the audit log is one history), and a change made
//! through another node is pulled every `cluster.flags_poll_ms` and applied through the
//! same file. The file stays each node's last good copy: a node that cannot reach Redis
//! keeps serving it. Knows nothing of Redis.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::parse::WHAT;
use super::{Flags, Mode, RouteFlag};
use crate::metrics::Metrics;
use crate::problem::{Problem, Problems};
use crate::routes::template::iso8601;

/// How often the flags file is checked for hand edits (a valid edit applies within 2 s).
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The result of the last (re)load of the flags file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadStatus {
    pub ok: bool,
    pub error: Option<String>,
    pub at: String,
}

/// Why a change through the admin API was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("unknown route {0}")]
    UnknownRoute(String),
    #[error("flags are at version {current}, not {expected}; read them again and retry")]
    StaleVersion { current: u64, expected: u64 },
    #[error("{0}")]
    Invalid(Problems),
    #[error("cannot write the flags file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the cluster's flags cannot be changed now: {0}")]
    Unavailable(String),
}

/// The flags document as the cluster shares it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedDoc {
    pub version: u64,
    /// The flags file's TOML.
    pub doc: String,
}

/// The outcome of a compare-and-set of the shared document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Swap {
    Done,
    /// The shared version was not the expected one.
    Stale {
        current: u64,
    },
}

/// Where a cluster's nodes share their flags (implemented by the cluster module). Errors
/// are messages: the store only reports them.
pub trait SharedFlags: Send + Sync + 'static {
    /// The shared document (`None`: none yet).
    fn fetch(&self) -> BoxFuture<'_, Result<Option<SharedDoc>, String>>;
    /// Replaces the document if its version is `expected` (0: none yet), appending
    /// `audit` (JSON lines of [`AuditEntry`]) to the shared audit log in the same step.
    fn swap(
        &self,
        expected: u64,
        next: SharedDoc,
        audit: Vec<String>,
    ) -> BoxFuture<'_, Result<Swap, String>>;
    /// The newest `limit` audit lines, newest first.
    fn audit(&self, limit: usize) -> BoxFuture<'_, Result<Vec<String>, String>>;
}

/// Attempts at a change without `If-Match` while other nodes keep changing the flags.
const SWAP_ATTEMPTS: usize = 8;

/// A change the admin API made (or found unnecessary): also the answer of
/// `PUT /admin/flags/{route}` and of the rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub version: u64,
    pub route: String,
    pub flag: RouteFlag,
}

/// One line of `audit.jsonl`, and one entry of `GET /admin/audit`: who changed which
/// route's table from what to what (`None`: the route had no table), and the version after.
/// Text fields read leniently (absent or `null` is empty), so a line written by hand or by
/// an older bridge still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ts: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub actor: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub route: String,
    pub before: Option<RouteFlag>,
    pub after: Option<RouteFlag>,
    pub version: u64,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

pub struct FlagStore {
    file: PathBuf,
    audit: PathBuf,
    routes: Vec<String>,
    current: watch::Sender<Arc<Flags>>,
    status: Mutex<ReloadStatus>,
    /// The file content the flags in force came from (to tell hand edits from our writes).
    seen: Mutex<Option<String>>,
    /// Serialises admin writes, so no update is lost.
    writes: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    shared: std::sync::OnceLock<Arc<dyn SharedFlags>>,
}

/// The flags file the bridge reads and writes, in the flags directory.
pub const FLAGS_FILE: &str = "flags.toml";
/// The shipped flags beside it: the tracked tree keeps only this example, and the live file
/// (and the audit log) are runtime state, created from it on first run.
pub const EXAMPLE_FILE: &str = "flags.example.toml";

/// The file whose flags a bridge started on `dir` serves: `flags.toml`, or on a first run
/// (no `flags.toml` yet) the example it would be created from.
pub fn flags_source(dir: &Path) -> PathBuf {
    let file = dir.join(FLAGS_FILE);
    let example = dir.join(EXAMPLE_FILE);
    if !file.exists() && example.exists() {
        example
    } else {
        file
    }
}

/// On a first run, creates `dir/flags.toml` from the example beside it; returns whether it
/// did. A directory without either is left alone (reading it then fails clearly).
fn create_from_example(dir: &Path) -> std::io::Result<bool> {
    let file = dir.join(FLAGS_FILE);
    let example = dir.join(EXAMPLE_FILE);
    if file.exists() || !example.exists() {
        return Ok(false);
    }
    write_atomically(&file, &std::fs::read_to_string(&example)?)?;
    Ok(true)
}

impl FlagStore {
    /// Loads `dir/flags.toml` (created from `flags.example.toml` on a first run); a missing
    /// or invalid file is an error at start-up.
    pub fn open(
        dir: &Path,
        routes: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<FlagStore>, Problems> {
        let shown = dir.join(FLAGS_FILE).display().to_string();
        let fail = |message: String| Problems::one(WHAT, Problem::new(message).in_file(&shown));
        let file = dir.join(FLAGS_FILE);
        match create_from_example(dir) {
            Ok(true) => tracing::info!(
                "created {} from {} (first run)",
                file.display(),
                EXAMPLE_FILE
            ),
            Ok(false) => {}
            Err(e) => {
                return Err(fail(format!("cannot create it from {EXAMPLE_FILE}: {e}")));
            }
        }
        let text = std::fs::read_to_string(&file)
            .map_err(|e| fail(format!("cannot read the flags file: {e}")))?;
        let names: Vec<&str> = routes.iter().map(String::as_str).collect();
        let flags = Flags::parse_toml(&text, &names).map_err(|e| e.in_file(&shown))?;
        metrics.flags_in_force(&flags, &routes);
        Ok(Arc::new(FlagStore {
            audit: dir.join("audit.jsonl"),
            file,
            routes,
            current: watch::channel(Arc::new(flags)).0,
            status: Mutex::new(ReloadStatus {
                ok: true,
                error: None,
                at: now(),
            }),
            seen: Mutex::new(Some(text)),
            writes: tokio::sync::Mutex::new(()),
            metrics,
            shared: std::sync::OnceLock::new(),
        }))
    }

    /// The flags in force.
    pub fn current(&self) -> Arc<Flags> {
        self.current.borrow().clone()
    }

    /// Notified on every change of the flags in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Flags>> {
        self.current.subscribe()
    }

    pub fn status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }

    /// Re-reads the file; applies a valid hand edit (audited as `file`), keeps the last
    /// good flags on an invalid one. Returns the status after the check.
    pub async fn reload(&self) -> ReloadStatus {
        let _write = self.writes.lock().await;
        let text = match tokio::fs::read_to_string(&self.file).await {
            Ok(t) => t,
            Err(e) => {
                return self.fail(format!(
                    "cannot read {}: {e}; the last good flags stay in force",
                    self.file.display()
                ));
            }
        };
        if lock(&self.seen).as_deref() == Some(text.as_str()) {
            // Unchanged since last applied (possibly restored after a bad edit).
            return if self.status().ok {
                self.status()
            } else {
                self.succeed()
            };
        }
        let names: Vec<&str> = self.routes.iter().map(String::as_str).collect();
        match Flags::parse_toml(&text, &names) {
            Err(e) => self.fail(format!(
                "{}: {}; the last good flags stay in force",
                self.file.display(),
                e.lines().join("; ")
            )),
            Ok(mut next) => {
                let before = self.current();
                // Versions only go up, so If-Match stays meaningful after a hand edit.
                if next != *before && next.version <= before.version {
                    next.version = before.version + 1;
                }
                *lock(&self.seen) = Some(text);
                if next != *before {
                    tracing::info!(
                        version = next.version,
                        "flags file changed by hand; applied"
                    );
                    for (route, b, a) in changes(&before, &next) {
                        self.append_audit("file", &route, b, a, next.version);
                    }
                    self.publish(next);
                }
                self.succeed()
            }
        }
    }

    fn fail(&self, error: String) -> ReloadStatus {
        let repeated = lock(&self.status).error.as_deref() == Some(error.as_str());
        if !repeated {
            tracing::warn!(%error, "flags reload failed");
            self.metrics.flag_reload_failed();
        }
        let mut s = lock(&self.status);
        *s = ReloadStatus {
            ok: false,
            error: Some(error),
            at: now(),
        };
        s.clone()
    }

    fn succeed(&self) -> ReloadStatus {
        let mut s = lock(&self.status);
        *s = ReloadStatus {
            ok: true,
            error: None,
            at: now(),
        };
        s.clone()
    }

    /// Watches the file until the store is dropped by everyone else.
    pub async fn watch(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(store) = weak.upgrade() else { return };
            store.reload().await;
        }
    }

    /// Replaces a route's table (the admin API's PUT). A table identical to the current
    /// one changes nothing. In a cluster the shared document is changed first, by
    /// compare-and-set: `If-Match` is checked against the cluster's version.
    pub async fn put(
        &self,
        route: &str,
        flag: RouteFlag,
        if_match: Option<u64>,
        actor: &str,
    ) -> Result<Changed, ChangeError> {
        let _write = self.writes.lock().await;
        if !self.routes.iter().any(|r| r == route) {
            return Err(ChangeError::UnknownRoute(route.to_string()));
        }
        let shared = self.shared.get().cloned();
        for _ in 0..SWAP_ATTEMPTS {
            if let Some(shared) = &shared {
                self.pull(shared.as_ref())
                    .await
                    .map_err(ChangeError::Unavailable)?;
            }
            let before = self.current();
            if let Some(expected) = if_match
                && expected != before.version
            {
                return Err(ChangeError::StaleVersion {
                    current: before.version,
                    expected,
                });
            }
            let old = before.routes.get(route).cloned();
            if old.as_ref() == Some(&flag) {
                return Ok(Changed {
                    version: before.version,
                    route: route.to_string(),
                    flag,
                });
            }
            let mut next = (*before).clone();
            next.version += 1;
            next.routes.insert(route.to_string(), flag.clone());
            let text = next.to_toml();
            let entry = audit_entry(actor, route, old, Some(flag.clone()), next.version);
            if let Some(shared) = &shared {
                let doc = SharedDoc {
                    version: next.version,
                    doc: text.clone(),
                };
                let line = serde_json::to_string(&entry).unwrap_or_default();
                match shared
                    .swap(before.version, doc, vec![line])
                    .await
                    .map_err(ChangeError::Unavailable)?
                {
                    Swap::Done => {}
                    Swap::Stale { current } => match if_match {
                        Some(expected) => {
                            return Err(ChangeError::StaleVersion { current, expected });
                        }
                        None => continue,
                    },
                }
            }
            write_atomically(&self.file, &text)?;
            *lock(&self.seen) = Some(text);
            self.write_audit(&entry);
            let version = next.version;
            self.publish(next);
            tracing::info!(route, version, actor, "flag changed");
            return Ok(Changed {
                version,
                route: route.to_string(),
                flag,
            });
        }
        Err(ChangeError::Unavailable(
            "other nodes kept changing the flags; retry".into(),
        ))
    }

    /// Shares this store's flags through `shared` (a cluster) and follows the changes
    /// made through other nodes, every `poll`, until the store is dropped.
    pub fn share(self: &Arc<Self>, shared: Arc<dyn SharedFlags>, poll: Duration) {
        if self.shared.set(shared).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(store) = weak.upgrade() else { return };
                if let Some(shared) = store.shared.get().cloned() {
                    let _write = store.writes.lock().await;
                    if let Err(e) = store.pull(shared.as_ref()).await {
                        tracing::debug!(error = %e, "cannot read the cluster's flags; the last good flags stay in force");
                    }
                }
                drop(store);
                tokio::time::sleep(poll).await;
            }
        });
    }

    /// Brings this node and the shared document together (the caller holds `writes`):
    /// a newer shared version (or the same version with other content: a race this node
    /// lost) is applied here through the file; a newer local one (a hand edit, or a Redis
    /// that lost its data) is pushed by compare-and-set; no shared document yet: seeded.
    async fn pull(&self, shared: &dyn SharedFlags) -> Result<(), String> {
        let local = self.current();
        let Some(remote) = shared.fetch().await? else {
            let doc = SharedDoc {
                version: local.version,
                doc: local.to_toml(),
            };
            shared.swap(0, doc, Vec::new()).await?;
            return Ok(());
        };
        let names: Vec<&str> = self.routes.iter().map(String::as_str).collect();
        if remote.version < local.version {
            // A hand edit here (or a Redis that lost its data): the shared history gets
            // the change too.
            let audit = match Flags::parse_toml(&remote.doc, &names) {
                Ok(before) => changes(&before, &local)
                    .into_iter()
                    .map(|(route, b, a)| audit_entry("file", &route, b, a, local.version))
                    .filter_map(|e| serde_json::to_string(&e).ok())
                    .collect(),
                Err(_) => Vec::new(),
            };
            let doc = SharedDoc {
                version: local.version,
                doc: local.to_toml(),
            };
            shared.swap(remote.version, doc, audit).await?;
            return Ok(());
        }
        let next = match Flags::parse_toml(&remote.doc, &names) {
            Ok(next) => next,
            Err(e) => {
                return Err(format!(
                    "the cluster's flags (version {}) are not valid here: {}",
                    remote.version,
                    e.lines().join("; ")
                ));
            }
        };
        if next == *local {
            return Ok(());
        }
        write_atomically(&self.file, &remote.doc).map_err(|e| e.to_string())?;
        *lock(&self.seen) = Some(remote.doc);
        for (route, b, a) in changes(&local, &next) {
            self.append_audit("cluster", &route, b, a, next.version);
        }
        tracing::info!(
            version = next.version,
            "flags changed through another node; applied"
        );
        self.publish(next);
        Ok(())
    }

    /// The newest `limit` audit entries: the cluster's history when shared (this node's
    /// file while Redis cannot be read), else the file's.
    pub async fn history(&self, limit: usize) -> Vec<AuditEntry> {
        if let Some(shared) = self.shared.get() {
            match shared.audit(limit).await {
                Ok(lines) => {
                    return lines
                        .iter()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster's audit log; showing this node's")
                }
            }
        }
        self.audit(limit)
    }

    /// The kill switch: the route's mode becomes `legacy` at once (other fields kept).
    pub async fn rollback(&self, route: &str, actor: &str) -> Result<Changed, ChangeError> {
        let mut flag = self
            .current()
            .routes
            .get(route)
            .cloned()
            .unwrap_or_default();
        flag.mode = Mode::Legacy;
        self.put(route, flag, None, actor).await
    }

    fn publish(&self, flags: Flags) {
        self.metrics.flags_in_force(&flags, &self.routes);
        self.current.send_replace(Arc::new(flags));
    }

    fn append_audit(
        &self,
        actor: &str,
        route: &str,
        before: Option<RouteFlag>,
        after: Option<RouteFlag>,
        version: u64,
    ) {
        self.write_audit(&audit_entry(actor, route, before, after, version));
    }

    fn write_audit(&self, entry: &AuditEntry) {
        let result = serde_json::to_string(entry)
            .map_err(std::io::Error::other)
            .and_then(|line| {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.audit)?;
                writeln!(f, "{line}")?;
                f.sync_data()
            });
        if let Err(e) = result {
            tracing::error!(error = %e, file = %self.audit.display(), "cannot append to the audit log");
        }
        self.metrics.flag_changed(&entry.route);
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit(&self, limit: usize) -> Vec<AuditEntry> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect()
    }
}

fn audit_entry(
    actor: &str,
    route: &str,
    before: Option<RouteFlag>,
    after: Option<RouteFlag>,
    version: u64,
) -> AuditEntry {
    AuditEntry {
        ts: now(),
        actor: actor.to_string(),
        route: route.to_string(),
        before,
        after,
        version,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> String {
    iso8601(SystemTime::now())
}

/// Routes whose table differs between two flag sets: (route, before, after).
fn changes(before: &Flags, after: &Flags) -> Vec<(String, Option<RouteFlag>, Option<RouteFlag>)> {
    let mut names: Vec<&String> = before.routes.keys().chain(after.routes.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (b, a) = (before.routes.get(name), after.routes.get(name));
            (b != a).then(|| (name.clone(), b.cloned(), a.cloned()))
        })
        .collect()
}

/// Writes a file so that a crash leaves either the old or the new content, never a mix:
/// a temporary file in the same directory, fsync, rename over, fsync the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("flags"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(text: &str) -> (tempfile::TempDir, Arc<FlagStore>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("flags.toml"), text).unwrap();
        let metrics = Metrics::new(&crate::routes::Routes::default());
        let s = FlagStore::open(dir.path(), vec!["chat".into(), "agent".into()], metrics).unwrap();
        (dir, s)
    }

    #[test]
    fn a_first_run_creates_the_flags_file_from_the_example() {
        let dir = tempfile::tempdir().unwrap();
        let example = "version = 4\n[route.chat]\nmode = \"dual\"\n";
        std::fs::write(dir.path().join(EXAMPLE_FILE), example).unwrap();
        assert_eq!(flags_source(dir.path()), dir.path().join(EXAMPLE_FILE));
        let metrics = Metrics::new(&crate::routes::Routes::default());
        let s = FlagStore::open(dir.path(), vec!["chat".into()], metrics).unwrap();
        assert_eq!(s.current().version, 4);
        let file = dir.path().join(FLAGS_FILE);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), example);
        assert_eq!(flags_source(dir.path()), file);
        // From then on the live file is the truth; the example is never read again.
        std::fs::write(&file, "version = 5\n").unwrap();
        let metrics = Metrics::new(&crate::routes::Routes::default());
        let s = FlagStore::open(dir.path(), vec!["chat".into()], metrics).unwrap();
        assert_eq!(s.current().version, 5);
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_file_whole() {
        let (dir, _s) = store("version = 1\n[route.chat]\nmode = \"dual\"\n");
        let file = dir.path().join("flags.toml");
        // What a crash between write and rename leaves behind: a stray temp file.
        std::fs::write(
            dir.path().join(".flags.toml.tmp-999"),
            "version = 2\n[route.chat]\nmo",
        )
        .unwrap();
        let metrics = Metrics::new(&crate::routes::Routes::default());
        let reopened = FlagStore::open(dir.path(), vec!["chat".into()], metrics).unwrap();
        assert_eq!(reopened.current().version, 1);
        // A completed write replaces the whole file at once.
        write_atomically(&file, "version = 3\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "version = 3\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&format!("tmp-{}", std::process::id()))
            })
            .collect();
        assert!(leftovers.is_empty(), "no temp file of ours stays behind");
    }

    #[tokio::test]
    async fn changes_bump_the_version_write_the_file_and_are_audited() {
        let (dir, s) = store("version = 4\n");
        let flag =
            RouteFlag::from_json(&serde_json::json!({"mode": "rollout", "percent": 12.5})).unwrap();
        let c = s.put("chat", flag.clone(), Some(4), "alice").await.unwrap();
        assert_eq!(c.version, 5);
        let same = s.put("chat", flag.clone(), None, "alice").await.unwrap();
        assert_eq!(same.version, 5, "an identical table changes nothing");
        assert!(matches!(
            s.put("chat", flag, Some(4), "bob").await,
            Err(ChangeError::StaleVersion {
                current: 5,
                expected: 4
            })
        ));
        let r = s.rollback("agent", "pager").await.unwrap();
        assert_eq!((r.version, r.flag.mode), (6, Mode::Legacy));
        let on_disk = std::fs::read_to_string(dir.path().join("flags.toml")).unwrap();
        let parsed = Flags::parse_toml(&on_disk, &["chat", "agent"]).unwrap();
        assert_eq!(parsed, *s.current());
        let audit = s.audit(10);
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[0].actor, "pager");
        assert_eq!(audit[0].before, None, "agent had no table");
        let after = audit[1].after.as_ref().expect("chat's new table");
        assert_eq!(after.percent.basis_points(), 1250);
    }

    #[tokio::test]
    async fn a_hand_edit_that_keeps_the_version_still_moves_it_forward() {
        let (dir, s) = store("version = 4\n[route.chat]\nmode = \"dual\"\n");
        std::fs::write(
            dir.path().join("flags.toml"),
            "version = 4\n[route.chat]\nmode = \"new\"\n",
        )
        .unwrap();
        let status = s.reload().await;
        assert!(status.ok);
        assert_eq!(s.current().version, 5);
        assert_eq!(s.current().route("chat").mode, Mode::New);
        assert_eq!(s.audit(1)[0].actor, "file");
    }
}
