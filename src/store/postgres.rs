//! PostgreSQL, for fleets: every proxy writes to one database, one `compare` reads them all.
//! `ts` is `timestamptz`, so the runbook's `ts > now() - interval '10 minutes'` works.

use postgres::{Client, NoTls};

use super::{PairRow, Store, StoreError, COLUMNS};

pub struct PgStore {
    client: Client,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mirror_latency (
    id BIGSERIAL PRIMARY KEY,
    ts TIMESTAMPTZ NOT NULL,
    route TEXT NOT NULL,
    shadow TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    request_id TEXT NOT NULL,
    primary_status INTEGER NOT NULL,
    shadow_status INTEGER NOT NULL,
    primary_latency_ms DOUBLE PRECISION NOT NULL,
    shadow_latency_ms DOUBLE PRECISION NOT NULL,
    diff_kind TEXT NOT NULL,
    diff_summary TEXT NOT NULL,
    diff_fields TEXT NOT NULL,
    primary_body TEXT,
    shadow_body TEXT
);
CREATE INDEX IF NOT EXISTS mirror_latency_ts ON mirror_latency (ts);
CREATE INDEX IF NOT EXISTS mirror_latency_route_ts ON mirror_latency (route, ts);
";

/// `ts` back as epoch milliseconds.
const SELECT: &str = "SELECT (extract(epoch from ts) * 1000)::bigint, route, shadow, method, path, request_id, \
     primary_status, shadow_status, primary_latency_ms, shadow_latency_ms, diff_kind, diff_summary, \
     diff_fields, primary_body, shadow_body FROM mirror_latency";

impl PgStore {
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        // Several proxies may start at once: serialise the schema creation.
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock(7370711)", &[])?;
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        Ok(PgStore { client })
    }

    fn rows(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<PairRow>, StoreError> {
        Ok(self
            .client
            .query(sql, params)?
            .iter()
            .map(|r| PairRow {
                ts_ms: r.get(0),
                route: r.get(1),
                shadow: r.get(2),
                method: r.get(3),
                path: r.get(4),
                request_id: r.get(5),
                primary_status: r.get(6),
                shadow_status: r.get(7),
                primary_latency_ms: r.get(8),
                shadow_latency_ms: r.get(9),
                diff_kind: r.get(10),
                diff_summary: r.get(11),
                diff_fields: r.get(12),
                primary_body: r.get(13),
                shadow_body: r.get(14),
            })
            .collect())
    }
}

impl Store for PgStore {
    fn insert(&mut self, rows: &[PairRow]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        let stmt = tx.prepare(&format!(
            "INSERT INTO mirror_latency ({COLUMNS}) VALUES (to_timestamp($1::float8 / 1000), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))?;
        for r in rows {
            let ts = r.ts_ms as f64;
            tx.execute(
                &stmt,
                &[
                    &ts,
                    &r.route,
                    &r.shadow,
                    &r.method,
                    &r.path,
                    &r.request_id,
                    &r.primary_status,
                    &r.shadow_status,
                    &r.primary_latency_ms,
                    &r.shadow_latency_ms,
                    &r.diff_kind,
                    &r.diff_summary,
                    &r.diff_fields,
                    &r.primary_body,
                    &r.shadow_body,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn pairs_since(
        &mut self,
        since_ms: i64,
        route: Option<&str>,
    ) -> Result<Vec<PairRow>, StoreError> {
        let since = since_ms as f64;
        match route {
            Some(r) => self.rows(&format!("{SELECT} WHERE ts > to_timestamp($1::float8 / 1000) AND route = $2 ORDER BY id"), &[&since, &r]),
            None => self.rows(&format!("{SELECT} WHERE ts > to_timestamp($1::float8 / 1000) ORDER BY id"), &[&since]),
        }
    }

    fn recent_diffs(
        &mut self,
        route: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PairRow>, StoreError> {
        let limit = limit as i64;
        match route {
            Some(r) => self.rows(
                &format!(
                    "{SELECT} WHERE diff_kind <> 'same' AND route = $1 ORDER BY id DESC LIMIT $2"
                ),
                &[&r, &limit],
            ),
            None => self.rows(
                &format!("{SELECT} WHERE diff_kind <> 'same' ORDER BY id DESC LIMIT $1"),
                &[&limit],
            ),
        }
    }

    fn retain(&mut self, before_ms: i64, max_rows: u64) -> Result<u64, StoreError> {
        let before = before_ms as f64;
        let mut n = self.client.execute(
            "DELETE FROM mirror_latency WHERE ts < to_timestamp($1::float8 / 1000)",
            &[&before],
        )?;
        let keep = max_rows as i64;
        n += self.client.execute(
            "DELETE FROM mirror_latency WHERE id <= (SELECT id FROM mirror_latency ORDER BY id DESC LIMIT 1 OFFSET $1)",
            &[&keep],
        )?;
        Ok(n)
    }
}
