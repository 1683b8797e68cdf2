//! The mirror path: what shadows receive, and that no shadow can touch the client.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::sync::Semaphore;

use crate::support::*;

const SERIES: &str = "mirrorctl_mirror_total{route=\"default\",shadow=\"shadow\",outcome=";

fn outcome(o: &str) -> String {
    format!("{SERIES}\"{o}\"}}")
}

/// Headers that must reach the shadow exactly as they reached the primary.
fn assert_same_copy(p: &Recorded, s: &Recorded, proxy_host: &str) {
    assert_eq!(p.method, s.method);
    assert_eq!(p.target, s.target);
    assert_eq!(p.body_len, s.body_len);
    assert_eq!(p.body_sha256, s.body_sha256);
    assert_eq!(p.header("host"), Some(proxy_host));
    let shadow_host = match proxy_host.rsplit_once(':') {
        Some((h, port)) => format!("{h}-shadow:{port}"),
        None => format!("{proxy_host}-shadow"),
    };
    assert_eq!(s.header("host"), Some(shadow_host.as_str()));
    assert_eq!(s.header("x-mirrorctl-shadow"), Some("shadow"));
    for (name, value) in p.headers.iter() {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        assert_eq!(s.headers.get(name), Some(value), "header {name}");
    }
}

#[tokio::test]
async fn get_is_mirrored_with_the_same_request_id() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let req = Request::get(proxy.url("/users/7?expand=orders&x=%20y"))
        .header("host", "my-app")
        .header("authorization", "Bearer t")
        .header("accept", "application/json")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (st, body) = send(&client(), req).await;
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"v1", "the client gets the primary's answer");
    let p = primary.next().await;
    let s = shadow.next().await;
    assert_same_copy(&p, &s, "my-app");
    assert!(p.header("x-request-id").is_some());
    proxy.stop().await;
}

async fn post_is_mirrored(chunked: bool) {
    let primary = Upstream::start(Behavior::Answer("stored")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let payload: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    let want = sha256(&payload);
    let c = client();
    let (st, body) = if chunked {
        // A body of unknown length goes out chunked.
        let body = Chunked(
            payload
                .chunks(16 * 1024)
                .map(Bytes::copy_from_slice)
                .collect(),
        );
        let c2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
        let req = Request::post(proxy.url("/upload?kind=chunked"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .expect("req");
        let resp = tokio::time::timeout(DEADLINE, c2.request(req))
            .await
            .expect("deadline")
            .expect("response");
        let st = resp.status();
        let b = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        (st, b)
    } else {
        let req = Request::post(proxy.url("/upload?kind=length"))
            .header("content-type", "application/octet-stream")
            .header("content-length", payload.len())
            .body(Full::new(Bytes::from(payload.clone())))
            .expect("req");
        send(&c, req).await
    };
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"stored");
    let p = primary.next().await;
    let s = shadow.next().await;
    assert_eq!(p.body_sha256, want);
    assert_eq!(p.body_len, 200 * 1024);
    assert_same_copy(&p, &s, &proxy.addr.to_string());
    if chunked {
        assert_eq!(p.header("transfer-encoding"), Some("chunked"));
    } else {
        assert_eq!(p.header("content-length"), Some("204800"));
    }
    proxy.stop().await;
}

/// A body of several chunks with no declared length.
struct Chunked(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn post_200k_with_content_length_is_mirrored() {
    post_is_mirrored(false).await;
}

#[tokio::test]
async fn post_200k_chunked_is_mirrored() {
    post_is_mirrored(true).await;
}

#[tokio::test]
async fn client_answer_never_waits_for_the_shadow() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let gate = Arc::new(Semaphore::new(0));
    let shadow = Upstream::start(Behavior::Hold(gate.clone())).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let c = client();
    for i in 0..5 {
        // The shadow holds every answer; each client request still completes.
        let (st, body) = get(&c, &proxy.url(&format!("/held/{i}"))).await;
        assert_eq!(st, 200);
        assert_eq!(&body[..], b"v1");
        // Order: the shadow has the copy but has not answered it; the client already has its answer.
        let s = shadow.next().await;
        assert_eq!(s.target, format!("/held/{i}"));
    }
    assert_eq!(proxy.metric(&outcome("succeeded")).await, 0.0);
    assert_eq!(
        proxy
            .metric("mirrorctl_shadow_in_flight{shadow=\"shadow\"}")
            .await,
        5.0
    );
    gate.add_permits(5);
    let done = proxy.wait_metric(&outcome("succeeded"), |v| v >= 5.0).await;
    assert_eq!(done, 5.0);
    assert_eq!(
        proxy
            .metric("mirrorctl_shadow_in_flight{shadow=\"shadow\"}")
            .await,
        0.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn refusing_shadow_never_fails_the_client_and_opens_the_breaker() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let dead = closed_port().await;
    let proxy = Proxy::start(flags(&primary.url(), &[format!("http://{dead}")])).await;
    let c = client();
    for i in 0..100 {
        let (st, body) = get(&c, &proxy.url(&format!("/r/{i}"))).await;
        assert_eq!(st, 200, "request {i}");
        assert_eq!(&body[..], b"v1");
    }
    assert_eq!(primary.received(), 100);
    // The first copies fail; after 5 consecutive failures the breaker opens and later copies are
    // dropped as circuit_open instead of hammering the dead port.
    let failed = proxy.wait_metric(&outcome("failed"), |v| v >= 5.0).await;
    let open = proxy.metric(&outcome("circuit_open")).await;
    let sent = proxy.metric(&outcome("sent")).await;
    assert!(failed >= 5.0, "failed = {failed}");
    assert!(open > 0.0, "circuit_open = {open}");
    assert_eq!(sent + open, 100.0, "every request is accounted for");
    assert_eq!(
        proxy
            .metric("mirrorctl_shadow_circuit_open{shadow=\"shadow\"}")
            .await,
        1.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn blackhole_shadow_is_bounded_by_the_in_flight_cap() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Never).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.mirror_max_in_flight = Some(4);
    f.mirror_timeout = Some("30s".into());
    let proxy = Proxy::start(f).await;
    let c = client();
    for i in 0..50 {
        let (st, _) = get(&c, &proxy.url(&format!("/b/{i}"))).await;
        assert_eq!(st, 200, "request {i}");
    }
    assert_eq!(proxy.metric(&outcome("sent")).await, 4.0);
    assert_eq!(proxy.metric(&outcome("overload")).await, 46.0);
    assert_eq!(
        proxy
            .metric("mirrorctl_shadow_in_flight{shadow=\"shadow\"}")
            .await,
        4.0
    );
    assert!(shadow.received() <= 4);
    proxy.stop().await;
}

#[tokio::test]
async fn mirror_timeout_frees_the_slot_and_is_counted() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Never).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.mirror_timeout = Some("100ms".into());
    let proxy = Proxy::start(f).await;
    let (st, _) = get(&client(), &proxy.url("/t")).await;
    assert_eq!(st, 200);
    let t = proxy.wait_metric(&outcome("timeout"), |v| v >= 1.0).await;
    assert_eq!(t, 1.0);
    assert_eq!(
        proxy
            .metric("mirrorctl_shadow_in_flight{shadow=\"shadow\"}")
            .await,
        0.0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn ten_percent_is_within_binomial_tolerance() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.mirror_percent = Some(10.0);
    let proxy = Proxy::start(f).await;
    let c = client();
    let n = 2000;
    for i in 0..n {
        let (st, _) = get(&c, &proxy.url(&format!("/s/{i}"))).await;
        assert_eq!(st, 200);
    }
    let sent = proxy.metric(&outcome("sent")).await;
    let sampled_out = proxy.metric(&outcome("sampled_out")).await;
    assert_eq!(sent + sampled_out, n as f64);
    // mean 200, sd = sqrt(2000 * 0.1 * 0.9) ≈ 13.4; 5 sd either way.
    assert!((sent - 200.0).abs() <= 67.0, "sent = {sent}");
    let landed = proxy
        .wait_metric(&outcome("succeeded"), |v| v >= sent)
        .await;
    assert_eq!(landed, sent);
    assert_eq!(shadow.received() as f64, sent);
    proxy.stop().await;
}

#[tokio::test]
async fn body_over_the_cap_is_not_mirrored_and_is_counted() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.mirror_max_body = Some("64KiB".into());
    let proxy = Proxy::start(f).await;
    let c = client();
    let big = Bytes::from(vec![7u8; 100 * 1024]);
    let req = Request::post(proxy.url("/big"))
        .body(Full::new(big.clone()))
        .expect("req");
    let (st, _) = send(&c, req).await;
    assert_eq!(st, 200);
    assert_eq!(
        primary.next().await.body_len,
        100 * 1024,
        "the primary gets the whole body"
    );
    let small = Request::post(proxy.url("/small"))
        .body(Full::new(Bytes::from_static(b"tiny")))
        .expect("req");
    send(&c, small).await;
    assert_eq!(
        shadow.next().await.target,
        "/small",
        "only the small body was mirrored"
    );
    assert_eq!(proxy.metric(&outcome("body_too_large")).await, 1.0);
    proxy.stop().await;
}

#[tokio::test]
async fn method_filter_keeps_writes_away_from_the_shadow() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.mirror_methods = vec!["GET".into(), "HEAD".into()];
    let proxy = Proxy::start(f).await;
    let c = client();
    let del = Request::delete(proxy.url("/item/1"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(send(&c, del).await.0, 200);
    get(&c, &proxy.url("/item/1")).await;
    let s = shadow.next().await;
    assert_eq!(s.method, http::Method::GET);
    assert_eq!(proxy.metric(&outcome("filtered_method")).await, 1.0);
    assert_eq!(primary.received(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn several_shadows_each_get_a_copy() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let a = Upstream::start(Behavior::Answer("a")).await;
    let b = Upstream::start(Behavior::Status(500)).await;
    let proxy = Proxy::start(flags(&primary.url(), &[a.url(), b.url()])).await;
    let (st, body) = get(&client(), &proxy.url("/multi")).await;
    assert_eq!((st.as_u16(), &body[..]), (200, &b"v1"[..]));
    let ra = a.next().await;
    let rb = b.next().await;
    assert_eq!(ra.header("x-mirrorctl-shadow"), Some("shadow-1"));
    assert_eq!(rb.header("x-mirrorctl-shadow"), Some("shadow-2"));
    assert_eq!(ra.header("x-request-id"), rb.header("x-request-id"));
    // The failing shadow's 500 is counted as its answer, not as a transport failure.
    let series = "mirrorctl_requests_total{route=\"default\",target=\"shadow-2\",status=\"500\"}";
    assert_eq!(proxy.wait_metric(series, |v| v >= 1.0).await, 1.0);
    proxy.stop().await;
}

#[tokio::test]
async fn access_log_lines_share_the_request_id() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let dir = std::env::temp_dir().join(format!("mirrorctl-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("access.log");
    let _ = std::fs::remove_file(&path);
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.access_log = Some(path.display().to_string());
    let proxy = Proxy::start(f).await;
    let req = Request::get(proxy.url("/hello"))
        .header("x-request-id", "corr-42")
        .body(Full::new(Bytes::new()))
        .expect("req");
    send(&client(), req).await;
    shadow.next().await;
    proxy.wait_metric(&outcome("succeeded"), |v| v >= 1.0).await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        lines = text.lines().map(str::to_owned).collect::<Vec<_>>();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let primary_line = lines
        .iter()
        .find(|l| l.contains("kind=primary"))
        .expect("primary line");
    let mirror_line = lines
        .iter()
        .find(|l| l.contains("kind=mirror"))
        .expect("mirror line");
    for l in [primary_line, mirror_line] {
        assert!(l.contains("request_id=corr-42"), "{l}");
        assert!(
            l.contains("method=GET path=/hello status=200 duration_ms="),
            "{l}"
        );
    }
    assert!(mirror_line.contains("target=shadow"), "{mirror_line}");
    proxy.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn metrics_expose_routes_targets_and_outcomes() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    get(&client(), &proxy.url("/m")).await;
    proxy.wait_metric(&outcome("succeeded"), |v| v >= 1.0).await;
    let m = proxy.metrics().await;
    for want in [
        "mirrorctl_requests_total{route=\"default\",target=\"primary\",status=\"200\"} 1",
        "mirrorctl_requests_total{route=\"default\",target=\"shadow\",status=\"200\"} 1",
        "mirrorctl_request_duration_seconds_count{route=\"default\",target=\"primary\"} 1",
        "mirrorctl_mirror_total{route=\"default\",shadow=\"shadow\",outcome=\"sent\"} 1",
        "mirrorctl_in_flight_requests 0",
    ] {
        assert!(m.contains(want), "missing `{want}` in\n{m}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn buffered_bytes_budget_bounds_copies_in_flight() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let gate = Arc::new(Semaphore::new(0));
    let shadow = Upstream::start(Behavior::Hold(gate.clone())).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    // Room for two 40 KiB bodies, not three.
    f.mirror_max_buffered = Some("100KiB".into());
    let proxy = Proxy::start(f).await;
    let c = client();
    for i in 0..3 {
        let req = Request::post(proxy.url(&format!("/p/{i}")))
            .body(Full::new(Bytes::from(vec![b'x'; 40 * 1024])))
            .expect("req");
        assert_eq!(send(&c, req).await.0, 200);
        if i < 2 {
            shadow.next().await; // held by the shadow, its bytes still counted
        }
    }
    assert_eq!(proxy.metric(&outcome("sent")).await, 2.0);
    assert_eq!(proxy.metric(&outcome("overload")).await, 1.0);
    gate.add_permits(2);
    proxy.wait_metric(&outcome("succeeded"), |v| v >= 2.0).await;
    // Released: the next copy fits again.
    let req = Request::post(proxy.url("/p/again"))
        .body(Full::new(Bytes::from(vec![b'x'; 40 * 1024])))
        .expect("req");
    send(&c, req).await;
    assert_eq!(shadow.next().await.target, "/p/again");
    gate.add_permits(1);
    proxy.stop().await;
}
