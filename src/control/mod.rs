//! Live control: change where routes send traffic without a restart, remember it, undo it.
//!
//! Every change is computed as a new table ([`ops`]) and swapped in atomically (requests in
//! flight finish on the table they started with), recorded in the route's history (rollback
//! restores the exact previous targets), written to the state file (temp file, fsync, rename),
//! and appended to the audit log. Scheduled actions live in the state file too, so a drain due
//! while the proxy was down runs when it starts.

pub mod ops;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

pub use ops::{OpError, Targets};

use crate::routing::Table;
use crate::telemetry::Metrics;

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Persisted {
    /// The live targets of every route changed since the config was read.
    pub routes: BTreeMap<String, Targets>,
    /// Previous targets per route, newest last (rollback pops).
    pub history: BTreeMap<String, Vec<Targets>>,
    pub schedules: Vec<Scheduled>,
    pub next_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scheduled {
    pub id: u64,
    pub route: String,
    /// `drain`: stop mirroring on the route.
    pub action: String,
    /// Unix milliseconds.
    pub due_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("state file {path}: {error}")]
    State { path: String, error: String },
    #[error("reload: {0}")]
    Reload(String),
    #[error("no scheduled action {0}")]
    NoSchedule(u64),
    #[error("route `{0}` has nothing to roll back to")]
    NoHistory(String),
    #[error("unknown action `{0}` (drain)")]
    UnknownAction(String),
}

/// Rebuilds the table from the config files (for reload).
pub type Reloader = Box<dyn Fn(&Metrics) -> Result<Table, String> + Send + Sync>;

pub struct Control {
    table: Arc<ArcSwap<Table>>,
    metrics: Arc<Metrics>,
    state_path: Option<PathBuf>,
    audit_path: Option<PathBuf>,
    reloader: Option<Reloader>,
    /// Serialises changes; holds the persisted state.
    state: Mutex<Persisted>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("state_path", &self.state_path)
            .finish()
    }
}

/// What a change did, for the API's answer and the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub route: String,
    pub action: String,
    pub before: Targets,
    pub after: Targets,
}

pub fn now_ms() -> i64 {
    crate::store::now_ms()
}

/// Write a file so that a crash leaves either the old or the new content: temp file, fsync,
/// rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Control {
    /// Take over the live table: read the state file (if any), re-apply its targets to the
    /// freshly built table, and run schedules that fell due while the proxy was down.
    pub fn start(
        table: Arc<ArcSwap<Table>>,
        metrics: Arc<Metrics>,
        state_path: Option<PathBuf>,
        reloader: Option<Reloader>,
    ) -> Result<Arc<Control>, ControlError> {
        let persisted = match &state_path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).map_err(|e| ControlError::State {
                    path: p.display().to_string(),
                    error: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|e| ControlError::State {
                    path: p.display().to_string(),
                    error: e.to_string(),
                })?
            }
            _ => Persisted::default(),
        };
        let audit_path = state_path.as_ref().map(|p| p.with_extension("audit.jsonl"));
        let c = Arc::new(Control {
            table,
            metrics,
            state_path,
            audit_path,
            reloader,
            state: Mutex::new(persisted),
        });
        c.reapply()?;
        c.run_due(now_ms());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Persisted> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply the persisted targets to the current table (after start or reload).
    fn reapply(&self) -> Result<(), ControlError> {
        let st = self.lock();
        let mut table = (**self.table.load()).clone();
        for (route, t) in &st.routes {
            match ops::apply(&table, route, t, &self.metrics) {
                Ok(next) => table = next,
                Err(e) => {
                    tracing::warn!(route, error = %e, "saved state no longer applies to this route; config wins")
                }
            }
        }
        self.table.store(Arc::new(table));
        Ok(())
    }

    fn persist(&self, st: &Persisted) -> Result<(), ControlError> {
        let Some(p) = &self.state_path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| ControlError::State {
            path: p.display().to_string(),
            error: e.to_string(),
        })?;
        write_atomic(p, &bytes).map_err(|e| ControlError::State {
            path: p.display().to_string(),
            error: e.to_string(),
        })
    }

    fn audit(&self, who: &str, what: &serde_json::Value) {
        let Some(p) = &self.audit_path else { return };
        let line = serde_json::json!({"ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(), "who": who, "change": what});
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|mut f| {
                f.write_all(format!("{line}\n").as_bytes())?;
                f.sync_data()
            });
        if let Err(e) = res {
            tracing::warn!(path = %p.display(), error = %e, "audit log write failed");
        }
    }

    /// Change one route's targets: compute, swap, remember, persist, audit.
    pub fn change(
        &self,
        who: &str,
        route: &str,
        action: &str,
        f: impl FnOnce(&Targets) -> Result<Targets, OpError>,
    ) -> Result<Change, ControlError> {
        let mut st = self.lock();
        let table = self.table.load();
        let before = ops::targets(ops::find_route(&table, route)?);
        let after = f(&before)?;
        let next = ops::apply(&table, route, &after, &self.metrics)?;
        let mut new_state = st.clone();
        new_state
            .history
            .entry(route.to_owned())
            .or_default()
            .push(before.clone());
        new_state.routes.insert(route.to_owned(), after.clone());
        self.persist(&new_state)?;
        *st = new_state;
        self.table.store(Arc::new(next));
        let c = Change {
            route: route.to_owned(),
            action: action.to_owned(),
            before,
            after,
        };
        self.audit(who, &serde_json::to_value(&c).unwrap_or_default());
        Ok(c)
    }

    /// Back to the exact targets before the last change of this route.
    pub fn rollback(&self, who: &str, route: &str) -> Result<Change, ControlError> {
        let mut st = self.lock();
        let table = self.table.load();
        let before = ops::targets(ops::find_route(&table, route)?);
        let mut new_state = st.clone();
        let prev = new_state
            .history
            .get_mut(route)
            .and_then(Vec::pop)
            .ok_or_else(|| ControlError::NoHistory(route.to_owned()))?;
        let next = ops::apply(&table, route, &prev, &self.metrics)?;
        new_state.routes.insert(route.to_owned(), prev.clone());
        self.persist(&new_state)?;
        *st = new_state;
        self.table.store(Arc::new(next));
        let c = Change {
            route: route.to_owned(),
            action: "rollback".into(),
            before,
            after: prev,
        };
        self.audit(who, &serde_json::to_value(&c).unwrap_or_default());
        Ok(c)
    }

    pub fn schedule(
        &self,
        who: &str,
        route: &str,
        action: &str,
        after: Duration,
    ) -> Result<Scheduled, ControlError> {
        if action != "drain" {
            return Err(ControlError::UnknownAction(action.to_owned()));
        }
        ops::find_route(&self.table.load(), route)?;
        let mut st = self.lock();
        let mut new_state = st.clone();
        new_state.next_id += 1;
        let s = Scheduled {
            id: new_state.next_id,
            route: route.to_owned(),
            action: action.to_owned(),
            due_ms: now_ms() + after.as_millis() as i64,
        };
        new_state.schedules.push(s.clone());
        self.persist(&new_state)?;
        *st = new_state;
        self.audit(
            who,
            &serde_json::json!({"action": "schedule", "scheduled": s}),
        );
        Ok(s)
    }

    pub fn cancel(&self, who: &str, id: u64) -> Result<Scheduled, ControlError> {
        let mut st = self.lock();
        let mut new_state = st.clone();
        let pos = new_state
            .schedules
            .iter()
            .position(|s| s.id == id)
            .ok_or(ControlError::NoSchedule(id))?;
        let s = new_state.schedules.remove(pos);
        self.persist(&new_state)?;
        *st = new_state;
        self.audit(
            who,
            &serde_json::json!({"action": "cancel", "scheduled": s}),
        );
        Ok(s)
    }

    pub fn schedules(&self) -> Vec<Scheduled> {
        self.lock().schedules.clone()
    }

    /// Run every schedule due at `now` (Unix ms). Returns how many ran.
    pub fn run_due(&self, now: i64) -> usize {
        let due: Vec<Scheduled> = self
            .lock()
            .schedules
            .iter()
            .filter(|s| s.due_ms <= now)
            .cloned()
            .collect();
        for s in &due {
            let res = self.change("scheduler", &s.route, &s.action, |t| Ok(ops::drain(t)));
            match res {
                Ok(_) => tracing::info!(route = %s.route, id = s.id, "scheduled drain ran"),
                Err(e) => {
                    tracing::warn!(route = %s.route, id = s.id, error = %e, "scheduled action failed; dropped")
                }
            }
            let mut st = self.lock();
            let mut new_state = st.clone();
            new_state.schedules.retain(|x| x.id != s.id);
            if self.persist(&new_state).is_ok() {
                *st = new_state;
            }
        }
        due.len()
    }

    /// Re-read the config; on error the running table stays and the error is returned.
    pub fn reload(&self, who: &str) -> Result<(), ControlError> {
        let Some(reloader) = &self.reloader else {
            return Err(ControlError::Reload(
                "no config file to reload (flags-only proxy)".into(),
            ));
        };
        let table = reloader(&self.metrics).map_err(ControlError::Reload)?;
        {
            let _st = self.lock();
            self.table.store(Arc::new(table));
        }
        self.reapply()?;
        self.audit(who, &serde_json::json!({"action": "reload"}));
        Ok(())
    }

    /// Check schedules every 250 ms until `stop` changes.
    pub async fn scheduler(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Only a due schedule costs a blocking-pool thread (its file writes happen
                    // off the async thread); an idle tick is a scan of the pending ones.
                    let now = now_ms();
                    if !self.lock().schedules.iter().any(|s| s.due_ms <= now) {
                        continue;
                    }
                    let c = self.clone();
                    let _ = tokio::task::spawn_blocking(move || c.run_due(now)).await;
                }
                _ = stop.changed() => return,
            }
        }
    }
}
