//! The embedded default: one SQLite file in WAL mode. `ts` is stored as RFC 3339 text in UTC
//! (sorts as time, readable in the sqlite3 shell).

use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::{PairRow, Store, StoreError, COLUMNS};

pub struct SqliteStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mirror_latency (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    route TEXT NOT NULL,
    shadow TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    request_id TEXT NOT NULL,
    primary_status INTEGER NOT NULL,
    shadow_status INTEGER NOT NULL,
    primary_latency_ms REAL NOT NULL,
    shadow_latency_ms REAL NOT NULL,
    diff_kind TEXT NOT NULL,
    diff_summary TEXT NOT NULL,
    diff_fields TEXT NOT NULL,
    primary_body TEXT,
    shadow_body TEXT
);
CREATE INDEX IF NOT EXISTS mirror_latency_ts ON mirror_latency (ts);
CREATE INDEX IF NOT EXISTS mirror_latency_route_ts ON mirror_latency (route, ts);
";

pub fn ts_text(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ts_ms(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_millis(500))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn })
    }

    fn select(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<PairRow>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok(PairRow {
                ts_ms: ts_ms(&r.get::<_, String>(0)?),
                route: r.get(1)?,
                shadow: r.get(2)?,
                method: r.get(3)?,
                path: r.get(4)?,
                request_id: r.get(5)?,
                primary_status: r.get(6)?,
                shadow_status: r.get(7)?,
                primary_latency_ms: r.get(8)?,
                shadow_latency_ms: r.get(9)?,
                diff_kind: r.get(10)?,
                diff_summary: r.get(11)?,
                diff_fields: r.get(12)?,
                primary_body: r.get(13)?,
                shadow_body: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Store for SqliteStore {
    fn insert(&mut self, rows: &[PairRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO mirror_latency ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
            ))?;
            for r in rows {
                stmt.execute(params![
                    ts_text(r.ts_ms),
                    r.route,
                    r.shadow,
                    r.method,
                    r.path,
                    r.request_id,
                    r.primary_status,
                    r.shadow_status,
                    r.primary_latency_ms,
                    r.shadow_latency_ms,
                    r.diff_kind,
                    r.diff_summary,
                    r.diff_fields,
                    r.primary_body,
                    r.shadow_body
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn pairs_since(
        &mut self,
        since_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<PairRow>, StoreError> {
        let since = ts_text(since_ms);
        match route {
            Some(r) => self.select(
                &format!(
                    "SELECT {COLUMNS} FROM mirror_latency WHERE ts > ?1 AND route = ?2 ORDER BY id"
                ),
                &[&since, &r],
            ),
            None => self.select(
                &format!("SELECT {COLUMNS} FROM mirror_latency WHERE ts > ?1 ORDER BY id"),
                &[&since],
            ),
        }
    }

    fn recent_diffs(
        &mut self,
        route: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PairRow>, StoreError> {
        let limit = limit as i64;
        match route {
            Some(r) => self.select(
                &format!("SELECT {COLUMNS} FROM mirror_latency WHERE diff_kind <> 'same' AND route = ?1 ORDER BY id DESC LIMIT ?2"),
                &[&r, &limit],
            ),
            None => self.select(
                &format!("SELECT {COLUMNS} FROM mirror_latency WHERE diff_kind <> 'same' ORDER BY id DESC LIMIT ?1"),
                &[&limit],
            ),
        }
    }

    fn retain(&mut self, before_ms: i64, max_rows: u64) -> Result<u64, StoreError> {
        let mut n = self.conn.execute(
            "DELETE FROM mirror_latency WHERE ts < ?1",
            params![ts_text(before_ms)],
        )? as u64;
        let cutoff: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM mirror_latency ORDER BY id DESC LIMIT 1 OFFSET ?1",
                params![max_rows as i64],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = cutoff {
            n += self
                .conn
                .execute("DELETE FROM mirror_latency WHERE id <= ?1", params![id])?
                as u64;
        }
        Ok(n)
    }
}
