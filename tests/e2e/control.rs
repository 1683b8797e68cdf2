//! Live control end to end: changes under load, the token, schedules across restarts, reload.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mirrorctl");
const TOKEN: &str = "test-token-0123456789";

/// Wait (bounded) until the background load has completed `n` more requests: every change
/// below is made while requests are flowing.
async fn load_progress(done: &AtomicUsize, n: usize) {
    let target = done.load(Ordering::SeqCst) + n;
    let end = tokio::time::Instant::now() + DEADLINE;
    while done.load(Ordering::SeqCst) < target {
        assert!(tokio::time::Instant::now() < end, "the load stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `clients` tasks sending GETs until `stop` (bounded: 60 s, 20 000 each): counts successes
/// in `ok` and anything else in `failed`.
fn spawn_load(
    clients: usize,
    url: String,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicUsize>,
    failed: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|w| {
            let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                let end = tokio::time::Instant::now() + Duration::from_secs(60);
                for i in 0..20_000 {
                    if stop.load(Ordering::SeqCst) || tokio::time::Instant::now() > end {
                        break;
                    }
                    let req = Request::get(format!("{url}/{w}/{i}"))
                        .body(Full::new(Bytes::new()))
                        .expect("req");
                    match c.request(req).await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mirrorctl-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp");
    d
}

fn write_config(dir: &std::path::Path, v1: &Upstream, v2: &Upstream, percent: &str) -> PathBuf {
    let p = dir.join("mirror.yaml");
    std::fs::write(
        &p,
        format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
routes:
  - name: default
    route: [{{destination: v1}}]
    mirrors: [{{destination: v2, percent: {percent}}}]
",
            v1.addr, v2.addr
        ),
    )
    .expect("write config");
    p
}

fn controlled(config: &PathBuf, state: Option<PathBuf>) -> ServeFlags {
    ServeFlags {
        admin_token: Some(TOKEN.into()),
        state,
        ..config_flags(std::slice::from_ref(config))
    }
}

async fn admin(
    proxy: &Proxy,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.admin));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b
        .body(Full::new(Bytes::from(
            body.map(|v| v.to_string()).unwrap_or_default(),
        )))
        .expect("req");
    let resp = tokio::time::timeout(DEADLINE, client().request(req))
        .await
        .expect("admin answers")
        .expect("admin response");
    let st = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (st, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn route_status(proxy: &Proxy) -> Value {
    let (st, v) = admin(proxy, "GET", "/status", None, None).await;
    assert_eq!(st, 200);
    v["routes"][0].clone()
}

/// The CLI against the proxy's admin API.
async fn ctl(proxy: &Proxy, args: &[&str]) -> (i32, String, String) {
    let admin = proxy.admin.to_string();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--admin", &admin])
            .env("MIRRORCTL_TOKEN", TOKEN)
            .output()
            .expect("run mirrorctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// Who answered `n` requests: (v1 answers, v2 answers).
async fn split(proxy: &Proxy, n: usize) -> (usize, usize) {
    let c = client();
    let (mut a, mut b) = (0, 0);
    for i in 0..n {
        let (st, body) = get(&c, &proxy.url(&format!("/split/{i}"))).await;
        assert_eq!(st, 200);
        match &body[..] {
            b"v1" => a += 1,
            b"v2" => b += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    (a, b)
}

#[tokio::test]
async fn promote_rollback_and_weights_under_load_fail_no_request() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let dir = tmpdir("load");
    let cfg = write_config(&dir, &v1, &v2, "100");
    let proxy = Proxy::start(controlled(&cfg, Some(dir.join("state.json")))).await;

    // Continuous load from 4 clients, bounded in count and time, counting every failure.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = spawn_load(4, proxy.url("/load"), &stop, &ok, &failed);

    // Promote with the CLI: v2 answers, v1 gets the copies.
    load_progress(&ok, 20).await;
    let (code, out, err) = ctl(&proxy, &["promote", "--route", "default"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("promote default: route v2=100 mirror v1@100%"),
        "{out}"
    );
    let (a, b) = split(&proxy, 50).await;
    assert_eq!((a, b), (0, 50), "answered by the former shadow");
    let _ = v1.drain().await;
    get(&client(), &proxy.url("/after-promote")).await;
    let mut mirrored = false;
    for _ in 0..100 {
        if v1
            .drain()
            .await
            .iter()
            .any(|r| r.target == "/after-promote" && r.header("x-mirrorctl-shadow") == Some("v1"))
        {
            mirrored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mirrored, "the former primary receives the mirror");

    // Roll back: the exact previous state.
    load_progress(&ok, 20).await;
    let (code, _, err) = ctl(&proxy, &["rollback", "--route", "default"]).await;
    assert_eq!(code, 0, "{err}");
    let r = route_status(&proxy).await;
    assert_eq!(r["destinations"], json!([{"service": "v1", "weight": 1}]));
    assert_eq!(r["mirrors"][0]["shadow"], "v2");
    assert_eq!(split(&proxy, 50).await, (50, 0));

    // A 50/50 split: within 5 sd over 400 requests (sd = 10).
    load_progress(&ok, 20).await;
    let (code, _, err) = ctl(
        &proxy,
        &["set-weight", "--route", "default", "v1=50", "v2=50"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (a, _) = split(&proxy, 400).await;
    assert!((a as i64 - 200).abs() <= 50, "v1 answered {a} of 400");

    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load task");
    }
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "the load ran: {}",
        ok.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no client request failed during the changes"
    );

    // Every change is in the audit log.
    let audit = std::fs::read_to_string(dir.join("state.audit.jsonl")).expect("audit log");
    let actions: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["change"]["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(actions, ["promote", "rollback", "set-weight"]);
    let first: Value = serde_json::from_str(audit.lines().next().expect("line")).expect("json");
    assert!(
        first["who"]
            .as_str()
            .is_some_and(|w| w.starts_with("admin-api 127.0.0.1:")),
        "{first}"
    );
    assert!(
        first["ts"].is_string()
            && first["change"]["before"].is_object()
            && first["change"]["after"].is_object()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn changes_need_the_token() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let dir = tmpdir("token");
    let cfg = write_config(&dir, &v1, &v2, "10");
    let proxy = Proxy::start(controlled(&cfg, None)).await;
    let body = Some(json!({"shadow": "v2", "percent": 50}));
    let (st, v) = admin(
        &proxy,
        "POST",
        "/routes/default/mirrors",
        None,
        body.clone(),
    )
    .await;
    assert_eq!(st, 401, "{v}");
    let (st, _) = admin(
        &proxy,
        "POST",
        "/routes/default/mirrors",
        Some("wrong-token-0123456789"),
        body.clone(),
    )
    .await;
    assert_eq!(st, 401);
    assert!(
        (route_status(&proxy).await["mirrors"][0]["percent"]
            .as_f64()
            .expect("pct")
            - 10.0)
            .abs()
            < 1e-6
    );
    let (st, v) = admin(&proxy, "POST", "/routes/default/mirrors", Some(TOKEN), body).await;
    assert_eq!(st, 200, "{v}");
    assert!(
        (route_status(&proxy).await["mirrors"][0]["percent"]
            .as_f64()
            .expect("pct")
            - 50.0)
            .abs()
            < 1e-6
    );
    let (st, v) = admin(&proxy, "POST", "/routes/nope/rollback", Some(TOKEN), None).await;
    assert_eq!(st, 404, "{v}");
    proxy.stop().await;

    // No token configured: changes are refused outright.
    let open = Proxy::start(config_flags(&[cfg])).await;
    let (st, v) = admin(&open, "POST", "/routes/default/rollback", Some(TOKEN), None).await;
    assert_eq!(st, 403, "{v}");
    open.stop().await;
}

async fn mirrors_of(proxy: &Proxy) -> usize {
    route_status(proxy).await["mirrors"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn scheduled_drains_fire_live_after_restart_and_when_overdue() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let dir = tmpdir("schedule");
    let cfg = write_config(&dir, &v1, &v2, "100");
    let state = dir.join("state.json");

    // Live: a drain 300 ms out fires.
    let p = Proxy::start(controlled(&cfg, Some(state.clone()))).await;
    let (code, out, err) = ctl(
        &p,
        &[
            "schedule", "--route", "default", "--after", "300ms", "drain",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scheduled #1: drain route default"), "{out}");
    let mut drained = false;
    for _ in 0..100 {
        if mirrors_of(&p).await == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drained, "the scheduled drain ran");
    let (code, _, _) = ctl(&p, &["rollback", "--route", "default"]).await;
    assert_eq!(code, 0);
    assert_eq!(mirrors_of(&p).await, 1);

    // Across a restart: promote, schedule a drain, stop; the new process has both.
    let (code, _, err) = ctl(
        &p,
        &["promote", "--route", "default", "--keep-mirror", "1s"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    p.stop().await;
    let p = Proxy::start(controlled(&cfg, Some(state.clone()))).await;
    let r = route_status(&p).await;
    assert_eq!(
        r["destinations"][0]["service"], "v2",
        "the promote survived the restart"
    );
    let (_, st) = admin(&p, "GET", "/status", None, None).await;
    assert_eq!(st["schedules"].as_array().map(Vec::len), Some(1), "{st}");
    let mut drained = false;
    for _ in 0..100 {
        if mirrors_of(&p).await == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        drained,
        "the drain scheduled before the restart ran after it"
    );

    // Overdue: scheduled, the proxy stops, the time passes, the next start runs it at once.
    let (code, _, _) = ctl(
        &p,
        &[
            "set-mirror",
            "--route",
            "default",
            "--shadow",
            "v1",
            "--percent",
            "100",
        ],
    )
    .await;
    assert_eq!(code, 0);
    let (code, _, _) = ctl(
        &p,
        &[
            "schedule", "--route", "default", "--after", "200ms", "drain",
        ],
    )
    .await;
    assert_eq!(code, 0);
    p.stop().await;
    let persisted: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("state")).expect("json");
    let due = persisted["schedules"][0]["due_ms"].as_i64().expect("due");
    let now = mirrorctl::store::now_ms();
    if due > now {
        tokio::time::sleep(Duration::from_millis((due - now) as u64 + 50)).await;
    }
    let p = Proxy::start(controlled(&cfg, Some(state.clone()))).await;
    assert_eq!(mirrors_of(&p).await, 0, "an overdue drain runs at start");
    let (_, st) = admin(&p, "GET", "/status", None, None).await;
    assert_eq!(st["schedules"], json!([]));
    p.stop().await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_table() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let dir = tmpdir("reload");
    let cfg = write_config(&dir, &v1, &v2, "10");
    let proxy = Proxy::start(controlled(&cfg, None)).await;
    std::fs::write(&cfg, "services: [\n").expect("break the file");
    let (code, _, err) = ctl(&proxy, &["reload"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("refused (422)") && err.contains("mirror.yaml:1:11: unclosed bracket"),
        "{err}"
    );
    assert_eq!(
        get(&client(), &proxy.url("/still")).await.0,
        200,
        "still serving the old table"
    );
    write_config(&dir, &v1, &v2, "50");
    let (code, out, err) = ctl(&proxy, &["reload"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded"), "{out}");
    assert!(
        (route_status(&proxy).await["mirrors"][0]["percent"]
            .as_f64()
            .expect("pct")
            - 50.0)
            .abs()
            < 1e-6
    );
    let (code, out, _) = ctl(&proxy, &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("mirror v2 50%"), "{out}");
    proxy.stop().await;
}

#[tokio::test]
async fn the_progressive_delivery_loop_with_commands_only() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let dir = tmpdir("loop");
    // Opt-in route `x-rollout: shadow` → v2 ahead of the default route, as shipped in examples/.
    let cfg = example(
        "examples/native/header-promotion.yaml",
        &[(9001, v1.addr.port()), (9002, v2.addr.port())],
    );
    let mut f = controlled(&cfg, Some(dir.join("state.json")));
    f.listen = vec!["127.0.0.1:0".into()];
    let proxy = Proxy::start(f).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = spawn_load(1, proxy.url("/loop"), &stop, &done, &failed);
    // 1. Mirror a slice, then grow it.
    for pct in ["1", "25", "100"] {
        load_progress(&done, 10).await;
        let (code, _, err) = ctl(
            &proxy,
            &[
                "set-mirror",
                "--route",
                "default",
                "--shadow",
                "v2",
                "--percent",
                pct,
            ],
        )
        .await;
        assert_eq!(code, 0, "{err}");
    }
    // 2. Testers opt in by header.
    let c = client();
    let (_, _, body) = get_with(&c, &proxy.url("/try"), &[("x-rollout", "shadow")]).await;
    assert_eq!(&body[..], b"v2");
    // 3. Cut over, keep the old version mirrored, drain it in a day.
    load_progress(&done, 10).await;
    let (code, out, err) = ctl(
        &proxy,
        &["promote", "--route", "default", "--keep-mirror", "24h"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("route v2=100 mirror v1@100%"), "{out}");
    assert!(out.contains("scheduled #1: drain route default"), "{out}");
    let (_, _, body) = get_with(&c, &proxy.url("/after"), &[]).await;
    assert_eq!(&body[..], b"v2");
    let (_, st) = admin(&proxy, "GET", "/status", None, None).await;
    let due = st["schedules"][0]["due_ms"].as_i64().expect("due");
    let in_a_day = mirrorctl::store::now_ms() + 24 * 3600 * 1000;
    assert!((due - in_a_day).abs() < 60_000, "the drain is due in 24 h");
    load_progress(&done, 10).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no failed request across the whole loop"
    );
    proxy.stop().await;
}
