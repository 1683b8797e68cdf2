//! Faults on the paths around the client's: a shadow killed and restarted under load, a
//! primary killed mid-request. (A compare store that is locked or down: compare.rs.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::support::*;

const SERIES: &str = "mirrorctl_mirror_total{route=\"default\",shadow=\"shadow\",outcome=";

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_shadow_killed_and_restarted_under_load_never_reaches_the_client() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let shadow_addr = shadow.addr;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let url = proxy.url("/load");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        load.spawn(async move {
            let c = client();
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (st, body) = get(&c, &url).await;
                if st == StatusCode::OK && &body[..] == b"v1" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.lock().expect("lock").push(format!("{st} {body:?}"));
                }
            }
        });
    }

    // Up: the shadow gets copies.
    wait_until("copies at the shadow", || shadow.received() >= 50).await;
    // Killed (listener and open connections): copies fail, the breaker opens.
    drop(shadow);
    proxy
        .wait_metric("mirrorctl_shadow_circuit_open{shadow=\"shadow\"}", |v| {
            v == 1.0
        })
        .await;
    let served_while_down = ok.load(Ordering::Relaxed);
    let dropped_before = proxy.metric(&format!("{SERIES}\"circuit_open\"}}")).await;
    wait_until("clients served while the shadow is down", || {
        ok.load(Ordering::Relaxed) >= served_while_down + 20
    })
    .await;
    let dropped = proxy.metric(&format!("{SERIES}\"circuit_open\"}}")).await;
    assert!(
        dropped > dropped_before,
        "copies dropped by the open breaker"
    );
    // Restarted on the same port: the breaker's probe finds it and copies flow again.
    let shadow = Upstream::start_at(shadow_addr, Behavior::Answer("v2")).await;
    wait_until("copies at the restarted shadow", || shadow.received() >= 50).await;
    proxy
        .wait_metric("mirrorctl_shadow_circuit_open{shadow=\"shadow\"}", |v| {
            v == 0.0
        })
        .await;

    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let failed = failed.lock().expect("lock").clone();
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");
    let served = ok.load(Ordering::Relaxed);
    assert!(served >= 100, "{served}");
    assert_eq!(
        primary.received(),
        served,
        "every request reached the primary once"
    );
    // Nothing left behind: no copy in flight; every copy accounted for.
    proxy
        .wait_metric("mirrorctl_shadow_in_flight{shadow=\"shadow\"}", |v| {
            v == 0.0
        })
        .await;
    let outcomes = [
        "sent",
        "overload",
        "circuit_open",
        "body_too_large",
        "body_incomplete",
    ];
    let mut admitted_or_dropped = 0.0;
    for o in outcomes {
        admitted_or_dropped += proxy.metric(&format!("{SERIES}\"{o}\"}}")).await;
    }
    assert_eq!(
        admitted_or_dropped as usize, served,
        "one outcome per request"
    );
    let failed_copies = proxy.metric(&format!("{SERIES}\"failed\"}}")).await;
    assert!(
        failed_copies >= 1.0,
        "the dead shadow's failures are counted"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_primary_killed_mid_request_gives_502_and_nothing_is_replayed() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let primary = Upstream::start(Behavior::Hold(gate)).await;
    let addr = primary.addr;
    let cfg = write_cfg(
        "killed-primary",
        &format!(
            "listeners: [127.0.0.1:0]
services: [{{name: v1, endpoints: ['{addr}']}}]
routes:
  - {{name: default, retries: {{attempts: 3, retry_on: '5xx,reset,connect-failure'}}, route: [{{destination: v1}}]}}
"
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    let post = {
        let c = c.clone();
        let url = proxy.url("/upload");
        tokio::spawn(async move {
            let req = http::Request::post(url)
                .body(Full::new(Bytes::from(vec![b'p'; 64 * 1024])))
                .expect("req");
            send(&c, req).await
        })
    };
    let read = {
        let c = c.clone();
        let url = proxy.url("/read");
        tokio::spawn(async move { get(&c, &url).await })
    };
    // Both are at the primary (the POST with its whole body), held; then it dies.
    let mut seen = [primary.next().await, primary.next().await];
    seen.sort_by(|a, b| a.target.cmp(&b.target));
    assert_eq!(seen[1].body_len, 64 * 1024);
    drop(primary);

    let (st, body) = post.await.expect("post");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.starts_with("upstream error ("), "a reason: {body}");
    // The GET may be retried (idempotent, no body): it finds the port closed.
    let (st, body) = read.await.expect("get");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.starts_with("upstream"), "a reason: {body}");

    // Back on the same port: nothing is replayed to it, and new requests are served.
    let primary = Upstream::start_at(addr, Behavior::Answer("back")).await;
    assert!(primary
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    let (st, body) = get(&c, &proxy.url("/after")).await;
    assert_eq!((st, &body[..]), (StatusCode::OK, &b"back"[..]));
    assert_eq!(primary.received(), 1);
    proxy.stop().await;
}

/// A primary that sends its head and part of its body, then goes silent with the connection
/// open: past the request timeout (here 400 ms, between two reads, as nginx's
/// `proxy_read_timeout`) the client's connection is closed short of the announced length, so
/// the client sees a truncated answer rather than waiting forever; the next request is served.
#[tokio::test]
async fn a_primary_silent_in_its_body_is_given_up_after_the_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (listener, addr) = raw_upstream().await;
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let (mut s, _, _) = accept_head(&listener).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .expect("write");
        // Silent, connection held, until the test is done.
        let _ = release_rx.await;
        // The next request gets a connection of its own and an answer.
        let (mut s2, _, _) = accept_head(&listener).await;
        s2.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain")
            .await
            .expect("write");
        drop(s);
        s2
    });
    let mut f = flags(&format!("http://{addr}"), &[]);
    f.request_timeout = Some("400ms".into());
    let proxy = Proxy::start(f).await;

    let mut c = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .expect("the proxy closes the client's connection well before the deadline");
    let waited = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 100\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    release_tx.send(()).expect("upstream waiting");
    let (st, body) = get(&client(), &proxy.url("/next")).await;
    assert_eq!((st, &body[..]), (StatusCode::OK, &b"again"[..]));
    drop(upstream.await.expect("upstream"));
    proxy.stop().await;
}
