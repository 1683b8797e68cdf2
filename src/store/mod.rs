//! Where compared pairs are kept: one table, `mirror_latency`, in SQLite (a file, the default)
//! or PostgreSQL (shared by a fleet of proxies). Same columns in both, so the runbook query
//! works on PostgreSQL and `mirrorctl compare` reads either.
//!
//! [`Writer`] is the proxy's side: a bounded queue and one thread that writes in batches.
//! When the store is slow or down, pairs are dropped and counted; the proxy never waits.

mod postgres;
mod sqlite;

pub use sqlite::ts_text as sqlite_ts;

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

pub use crate::compare::report::PairRow;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{0}`: use sqlite:PATH (or a .db path) or postgres://…")]
    BadUrl(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] ::postgres::Error),
}

/// The schema's columns, in insert order.
pub const COLUMNS: &str = "ts, route, shadow, method, path, request_id, primary_status, shadow_status, \
     primary_latency_ms, shadow_latency_ms, diff_kind, diff_summary, diff_fields, primary_body, shadow_body";

pub trait Store: Send {
    fn insert(&mut self, rows: &[PairRow]) -> Result<(), StoreError>;
    /// Pairs newer than `since_ms` (epoch ms), optionally of one route, oldest first.
    fn pairs_since(
        &mut self,
        since_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<PairRow>, StoreError>;
    /// The newest pairs that differ, newest first.
    fn recent_diffs(
        &mut self,
        route: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PairRow>, StoreError>;
    /// Delete pairs older than `before_ms` and all but the newest `max_rows`; returns rows deleted.
    fn retain(&mut self, before_ms: i64, max_rows: u64) -> Result<u64, StoreError>;
}

/// `sqlite:PATH`, `sqlite://PATH`, a path ending in `.db`/`.sqlite`, or `postgres://…`.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PgStore::open(url)?));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .or_else(|| {
            (url.ends_with(".db") || url.ends_with(".sqlite") || url.ends_with(".sqlite3"))
                .then_some(url)
        });
    match path {
        Some(p) if !p.is_empty() => Ok(Box::new(sqlite::SqliteStore::open(p)?)),
        _ => Err(StoreError::BadUrl(url.to_owned())),
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Retention: by age and by row count (whichever removes more).
#[derive(Debug, Clone)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_rows: 1_000_000,
        }
    }
}

/// The proxy's handle on the store: never blocks.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: SyncSender<PairRow>,
    dropped: Counter,
}

const QUEUE: usize = 10_000;
const BATCH: usize = 500;

impl Writer {
    /// Start the writer thread. Opening the store happens there too: a store that is down at
    /// start is retried in the background while pairs are dropped and counted.
    pub fn start(url: String, retention: Retention, written: Counter, dropped: Counter) -> Writer {
        let (tx, rx) = sync_channel(QUEUE);
        let d = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(url, retention, rx, written, d));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "store writer thread failed to start; pairs will be dropped");
        }
        Writer { tx, dropped }
    }

    /// Queue a pair; when the queue is full (store slow or down) it is dropped and counted.
    pub fn submit(&self, row: PairRow) {
        match self.tx.try_send(row) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn run(
    url: String,
    retention: Retention,
    rx: Receiver<PairRow>,
    written: Counter,
    dropped: Counter,
) {
    let mut store: Option<Box<dyn Store>> = None;
    let mut next_open = Instant::now();
    let mut next_retain = Instant::now() + Duration::from_secs(10);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(row) => batch.push(row),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if store.is_none() && Instant::now() >= next_open {
            match open(&url) {
                Ok(s) => {
                    tracing::info!(store = %redact(&url), "compare store open");
                    store = Some(s);
                }
                Err(e) => {
                    tracing::warn!(store = %redact(&url), error = %e, "compare store unavailable; retrying in 5s");
                    next_open = Instant::now() + Duration::from_secs(5);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        match store.as_mut() {
            Some(s) => match s.insert(&batch) {
                Ok(()) => {
                    written.inc_by(batch.len() as u64);
                }
                Err(e) => {
                    dropped.inc_by(batch.len() as u64);
                    tracing::warn!(error = %e, rows = batch.len(), "compare store write failed; rows dropped, reconnecting");
                    store = None;
                    next_open = Instant::now() + Duration::from_secs(1);
                }
            },
            None => {
                dropped.inc_by(batch.len() as u64);
            }
        }
        batch.clear();
        if Instant::now() >= next_retain {
            next_retain = Instant::now() + Duration::from_secs(60);
            if let Some(s) = store.as_mut() {
                let before = now_ms() - retention.max_age.as_millis() as i64;
                if let Err(e) = s.retain(before, retention.max_rows) {
                    tracing::warn!(error = %e, "compare store retention failed");
                }
            }
        }
    }
}

/// A store URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(matches!(open("mysql://x"), Err(StoreError::BadUrl(_))));
        assert!(matches!(open("sqlite:"), Err(StoreError::BadUrl(_))));
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }

    pub(super) fn sample(i: i64, route: &str, kind: &str) -> PairRow {
        PairRow {
            ts_ms: now_ms() - 1000 + i,
            route: route.into(),
            shadow: "v2".into(),
            method: "GET".into(),
            path: format!("/p/{i}"),
            request_id: format!("id-{i}"),
            primary_status: 200,
            shadow_status: if kind == "status" { 500 } else { 200 },
            primary_latency_ms: 1.5,
            shadow_latency_ms: 2.5,
            diff_kind: kind.into(),
            diff_summary: "s".into(),
            diff_fields: if kind == "body" {
                "$.a".into()
            } else {
                String::new()
            },
            primary_body: (kind != "same").then(|| "{\"a\":1}".into()),
            shadow_body: (kind != "same").then(|| "{\"a\":2}".into()),
        }
    }

    #[test]
    fn sqlite_round_trip_and_retention() {
        let dir = std::env::temp_dir().join(format!("mirrorctl-store-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let mut s = open(&format!("sqlite:{}", path.display())).expect("open");
        let rows: Vec<PairRow> = (0..10)
            .map(|i| {
                sample(
                    i,
                    if i % 2 == 0 { "a" } else { "b" },
                    if i == 3 { "body" } else { "same" },
                )
            })
            .collect();
        s.insert(&rows).expect("insert");
        let back = s.pairs_since(0, None).expect("query");
        assert_eq!(back, rows);
        assert_eq!(s.pairs_since(0, Some("a")).expect("q").len(), 5);
        assert_eq!(s.pairs_since(now_ms() + 1000, None).expect("q").len(), 0);
        let d = s.recent_diffs(None, 5).expect("diffs");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].request_id, "id-3");
        assert_eq!(s.retain(0, 4).expect("retain"), 6);
        let left = s.pairs_since(0, None).expect("q");
        assert_eq!(
            left.iter()
                .map(|r| r.request_id.as_str())
                .collect::<Vec<_>>(),
            ["id-6", "id-7", "id-8", "id-9"]
        );
        assert_eq!(s.retain(now_ms() + 1, 100).expect("retain"), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
