//! Compare end to end: live upstreams → pairs in the store → `mirrorctl compare` / `diffs`.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mirrorctl");

static TICK: AtomicU64 = AtomicU64::new(0);

/// v1: /a and /b answer JSON; every answer carries a fresh timestamp.
fn v1() -> Behavior {
    Behavior::ByPath(Arc::new(|path| {
        let t = TICK.fetch_add(1, Ordering::SeqCst);
        match path {
            p if p.starts_with("/a") => (
                200,
                "application/json",
                format!(r#"{{"id":1,"name":"x","timestamp":{t}}}"#),
            ),
            p if p.starts_with("/b") => (
                200,
                "application/json",
                format!(r#"{{"id":1,"price":10,"timestamp":{t}}}"#),
            ),
            _ => (200, "text/plain", "same\n".into()),
        }
    }))
}

/// v2: fails on /a, changes a field on /b, answers /c like v1.
fn v2() -> Behavior {
    Behavior::ByPath(Arc::new(|path| {
        let t = TICK.fetch_add(1, Ordering::SeqCst);
        match path {
            p if p.starts_with("/a") => (500, "application/json", r#"{"error":"boom"}"#.into()),
            p if p.starts_with("/b") => (
                200,
                "application/json",
                format!(r#"{{"id":1,"price":12,"timestamp":{t}}}"#),
            ),
            _ => (200, "text/plain", "same\n".into()),
        }
    }))
}

fn config(primary: &Upstream, shadow: &Upstream, store: &str, ignore: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mirrorctl-cmp-{}-{}",
        std::process::id(),
        TICK.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("tmp");
    let p = dir.join("compare.yaml");
    let text = format!(
        "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
compare:
  store: '{store}'
  ignore_fields: [{ignore}]
routes:
  - {{name: a, match: [{{uri: {{prefix: /a}}}}], route: [{{destination: v1}}], mirrors: [{{destination: v2}}]}}
  - {{name: b, match: [{{uri: {{prefix: /b}}}}], route: [{{destination: v1}}], mirrors: [{{destination: v2}}]}}
  - {{name: c, route: [{{destination: v1}}], mirrors: [{{destination: v2}}]}}
",
        primary.addr, shadow.addr
    );
    std::fs::write(&p, text).expect("write");
    p
}

fn tmp_db(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("mirrorctl-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join(format!("{name}.db"));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    format!("sqlite:{}", path.display())
}

async fn drive(proxy: &Proxy, n: usize) {
    let c = client();
    for i in 0..n {
        for r in ["a", "b", "c"] {
            let (st, _, _) = get_with(&c, &proxy.url(&format!("/{r}/{i}")), &[]).await;
            assert_eq!(st, 200, "the client always gets the primary's answer");
        }
    }
    let want = (3 * n) as f64;
    let written = proxy
        .wait_metric("mirrorctl_store_written_total", |v| v >= want)
        .await;
    assert_eq!(written, want);
}

fn compare_cli(store: &str, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["compare", "--store", store, "--since", "10m"])
        .args(extra)
        .output()
        .expect("run compare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn route<'a>(j: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    j["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("route {name} in {j}"))
}

#[tokio::test]
async fn compare_reports_drift_per_route_and_gates_exit_1() {
    let primary = Upstream::start(v1()).await;
    let shadow = Upstream::start(v2()).await;
    let store = tmp_db("drift");
    let proxy = Proxy::start(config_flags(&[config(
        &primary,
        &shadow,
        &store,
        "'$.timestamp'",
    )]))
    .await;
    drive(&proxy, 20).await;
    assert_eq!(
        proxy
            .metric("mirrorctl_mirror_pairs_total{route=\"a\",shadow=\"v2\",outcome=\"status\"}")
            .await,
        20.0
    );
    assert_eq!(
        proxy
            .metric("mirrorctl_mirror_pairs_total{route=\"b\",shadow=\"v2\",outcome=\"body\"}")
            .await,
        20.0
    );
    assert_eq!(
        proxy
            .metric("mirrorctl_mirror_pairs_total{route=\"c\",shadow=\"v2\",outcome=\"same\"}")
            .await,
        20.0
    );
    proxy.stop().await;

    let (code, out, err) = compare_cli(&store, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    let a = route(&j, "a");
    assert_eq!(a["pairs"], 20);
    assert_eq!(a["status_mismatch_rate"], 1.0);
    assert_eq!(a["primary_status"]["200"], 20);
    assert_eq!(a["shadow_status"]["500"], 20);
    assert_eq!(a["error_rate_delta"], 1.0);
    let b = route(&j, "b");
    assert_eq!(b["status_mismatch_rate"], 0.0);
    assert_eq!(b["body_diff_rate"], 1.0);
    assert_eq!(b["top_fields"][0]["field"], "$.price");
    assert_eq!(
        b["top_fields"].as_array().map(Vec::len),
        Some(1),
        "the timestamp is ignored: {b}"
    );
    let c = route(&j, "c");
    assert_eq!(
        (
            c["status_mismatch_rate"].as_f64(),
            c["body_diff_rate"].as_f64()
        ),
        (Some(0.0), Some(0.0))
    );
    for key in ["primary_p95_ms", "shadow_p95_ms", "p95_drift_ms"] {
        assert!(c[key].is_number(), "{key} in {c}");
    }

    let (code, _, err) = compare_cli(&store, &["--max-diff-rate", "0.1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("route a (shadow v2): diff rate 1.000 > --max-diff-rate 0.1"),
        "{err}"
    );
    assert!(err.contains("route b (shadow v2)"), "{err}");
    assert!(!err.contains("route c"), "{err}");
    let (code, _, err) = compare_cli(
        &store,
        &[
            "--route",
            "c",
            "--max-diff-rate",
            "0",
            "--max-error-rate-delta",
            "0",
        ],
    );
    assert_eq!(code, 0, "identical answers pass every gate: {err}");
    let (code, out, _) = compare_cli(&store, &[]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("a ") && l.contains("100.0%")),
        "{out}"
    );
    let (code, _, err) = compare_cli("mysql://nope", &[]);
    assert_eq!(code, 2, "{err}");

    // diffs: newest differing pairs with the request id and both bodies.
    let out = Command::new(BIN)
        .args(["diffs", "--store", &store, "--route", "b", "--limit", "2"])
        .output()
        .expect("diffs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("route=b shadow=v2 request_id=").count(),
        2,
        "{text}"
    );
    assert!(text.contains("json body: $.price"), "{text}");
    assert!(text.contains("\"price\": 12"), "{text}");
}

#[tokio::test]
async fn without_ignore_rules_the_timestamp_is_reported() {
    let primary = Upstream::start(v1()).await;
    let shadow = Upstream::start(v1()).await;
    let store = tmp_db("noise");
    let proxy = Proxy::start(config_flags(&[config(&primary, &shadow, &store, "")])).await;
    drive(&proxy, 5).await;
    proxy.stop().await;
    let (_, out, _) = compare_cli(&store, &["--format", "json", "--route", "a"]);
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(route(&j, "a")["top_fields"][0]["field"], "$.timestamp");
}

#[tokio::test]
async fn a_stalled_store_drops_and_counts_and_recovers() {
    let primary = Upstream::start(v1()).await;
    let shadow = Upstream::start(v1()).await;
    let store = tmp_db("stalled");
    let path = store.trim_start_matches("sqlite:").to_owned();
    // Another writer holds the database: the proxy's writer cannot even create its table.
    let lock = rusqlite::Connection::open(&path).expect("open");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let proxy = Proxy::start(config_flags(&[config(&primary, &shadow, &store, "")])).await;
    let c = client();
    for i in 0..30 {
        let (st, _, _) = get_with(&c, &proxy.url(&format!("/c/{i}")), &[]).await;
        assert_eq!(st, 200, "the client path is unaffected");
    }
    let dropped = proxy
        .wait_metric("mirrorctl_store_dropped_total", |v| v >= 30.0)
        .await;
    assert_eq!(dropped, 30.0);
    assert_eq!(proxy.metric("mirrorctl_store_written_total").await, 0.0);
    drop(lock);
    // The writer retries on its own (every 5 s); new pairs land once it is back.
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut written = 0.0;
    for i in 0..400 {
        get_with(&c, &proxy.url(&format!("/c/again-{i}")), &[]).await;
        written = proxy.metric("mirrorctl_store_written_total").await;
        if written > 0.0 || tokio::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(written > 0.0, "the store came back");
    proxy.stop().await;
}

/// Runs when CI provides a PostgreSQL (`MIRRORCTL_TEST_POSTGRES=postgres://…`): several routes'
/// pairs land in `mirror_latency` and the runbook's drift query answers per route.
#[tokio::test]
async fn postgres_store_answers_the_runbook_query() {
    let Ok(url) = std::env::var("MIRRORCTL_TEST_POSTGRES") else {
        eprintln!(
            "MIRRORCTL_TEST_POSTGRES not set: PostgreSQL test not run here (.ci/run sets it)"
        );
        return;
    };
    let reset = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut pg = postgres::Client::connect(&reset, postgres::NoTls).expect("connect");
        pg.batch_execute("DROP TABLE IF EXISTS mirror_latency")
            .expect("reset");
    })
    .await
    .expect("join");
    let primary = Upstream::start(v1()).await;
    let shadow = Upstream::start(v2()).await;
    let proxy = Proxy::start(config_flags(&[config(
        &primary,
        &shadow,
        &url,
        "'$.timestamp'",
    )]))
    .await;
    drive(&proxy, 10).await;
    proxy.stop().await;
    let url2 = url.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let mut pg = postgres::Client::connect(&url2, postgres::NoTls).expect("connect");
        // The runbook query; PostgreSQL cannot use output aliases in the same select list, so
        // the drift is computed over a subquery (documented in README).
        pg.query(
            "select route, p95_shadow, p95_primary, (p95_shadow - p95_primary) as drift_ms from (
               select route,
                 percentile_cont(0.95) within group (order by shadow_latency_ms) as p95_shadow,
                 percentile_cont(0.95) within group (order by primary_latency_ms) as p95_primary
               from mirror_latency
               where ts > now() - interval '10 minutes'
               group by route) t
             order by drift_ms desc",
            &[],
        )
        .expect("runbook query")
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, f64>(1),
                r.get::<_, f64>(2),
                r.get::<_, f64>(3),
            )
        })
        .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let (code, out, err) = compare_cli(&url, &["--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    for (route_name, p95_shadow, p95_primary, drift) in rows {
        let r = route(&j, &route_name);
        assert!(
            (r["shadow_p95_ms"].as_f64().expect("num") - p95_shadow).abs() < 0.01,
            "{route_name}"
        );
        assert!(
            (r["primary_p95_ms"].as_f64().expect("num") - p95_primary).abs() < 0.01,
            "{route_name}"
        );
        assert!(
            (r["p95_drift_ms"].as_f64().expect("num") - drift).abs() < 0.02,
            "{route_name}"
        );
    }
    assert_eq!(route(&j, "a")["status_mismatch_rate"], 1.0);
}

#[tokio::test]
async fn noise_learned_from_a_secondary_removes_the_timestamp() {
    let primary = Upstream::start(v1()).await;
    let secondary = Upstream::start(v1()).await;
    let candidate = Upstream::start(v2()).await;
    let store = tmp_db("secondary");
    let dir = std::env::temp_dir().join(format!("mirrorctl-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cfg = dir.join("secondary.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v1b, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
compare: {{store: '{store}'}}
routes:
  - name: b
    route: [{{destination: v1}}]
    mirrors: [{{destination: v2}}, {{destination: v1b}}]
",
            primary.addr, secondary.addr, candidate.addr
        ),
    )
    .expect("write");
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    for i in 0..20 {
        assert_eq!(
            get_with(&c, &proxy.url(&format!("/b/{i}")), &[]).await.0,
            200
        );
    }
    proxy
        .wait_metric("mirrorctl_store_written_total", |v| v >= 40.0)
        .await;
    proxy.stop().await;

    // Without the secondary, the ever-changing timestamp drowns the real change.
    let (_, out, _) = compare_cli(&store, &["--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    let fields: Vec<&str> = j["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r["shadow"] == "v2")
        .flat_map(|r| r["top_fields"].as_array().expect("fields").iter())
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(fields.contains(&"$.timestamp"), "{fields:?}");
    // With it, the timestamp is learned as noise and only the price is reported.
    let (code, out, err) = compare_cli(&store, &["--format", "json", "--secondary", "v1b"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).expect("json");
    let routes = j["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 1, "only the candidate: {j}");
    let v2 = &routes[0];
    assert_eq!(v2["shadow"], "v2");
    assert_eq!(v2["noise_fields"][0], "$.timestamp");
    assert_eq!(v2["top_fields"].as_array().map(Vec::len), Some(1), "{v2}");
    assert_eq!(v2["top_fields"][0]["field"], "$.price");
    assert_eq!(v2["body_diff_rate"], 1.0);
}
