//! Routing end to end: Istio and native configs from `examples/` against live upstreams.

use std::time::Duration;

use crate::support::*;

fn mirror_series(route: &str, shadow: &str, outcome: &str) -> String {
    format!("mirrorctl_mirror_total{{route=\"{route}\",shadow=\"{shadow}\",outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn istio_seed_example_runs_unchanged() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let test_v1 = Upstream::start(Behavior::Answer("test-v1")).await;
    // The VirtualService file is used as shipped; only the ServiceEntry's ports are the test's.
    let vs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/istio/seed-virtualservice.yaml");
    let dests = example(
        "examples/istio/seed-destinations.yaml",
        &[(9001, v1.addr.port()), (9002, test_v1.addr.port())],
    );
    let proxy = Proxy::start(config_flags(&[vs, dests])).await;
    let c = client();
    let (st, _, body) = get_with(&c, &proxy.url("/hello"), &[("host", "my-app")]).await;
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"v1", "served by subset v1");
    let p = v1.next().await;
    let m = test_v1.next().await;
    assert_eq!(m.target, "/hello");
    assert_eq!(m.header("host"), Some("my-app-shadow"));
    assert_eq!(m.header("x-request-id"), p.header("x-request-id"));
    // The full name of the host is served too; another host is not.
    let (st, _, _) = get_with(
        &c,
        &proxy.url("/"),
        &[("host", "my-app.default.svc.cluster.local:3000")],
    )
    .await;
    assert_eq!(st, 200);
    let (st, _, body) = get_with(&c, &proxy.url("/"), &[("host", "other-app")]).await;
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    proxy.stop().await;
}

async fn header_promotion(path: &str) {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let cfg = example(path, &[(9001, v1.addr.port()), (9002, v2.addr.port())]);
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    let host = [("host", "payments")];
    for i in 0..20 {
        let (st, _, body) = get_with(
            &c,
            &proxy.url(&format!("/pay/{i}")),
            &[host[0], ("x-rollout", "shadow")],
        )
        .await;
        assert_eq!((st.as_u16(), &body[..]), (200, &b"v2"[..]), "opted in");
        let (st, _, body) = get_with(&c, &proxy.url(&format!("/pay/{i}")), &host).await;
        assert_eq!((st.as_u16(), &body[..]), (200, &b"v1"[..]), "everyone else");
        let (_, _, body) =
            get_with(&c, &proxy.url("/x"), &[host[0], ("x-rollout", "primary")]).await;
        assert_eq!(&body[..], b"v1", "another value is not an opt-in");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn istio_header_promotion() {
    header_promotion("examples/istio/header-promotion.yaml").await;
}

#[tokio::test]
async fn native_header_promotion() {
    header_promotion("examples/native/header-promotion.yaml").await;
}

async fn canary(path: &str, host: &str, route: &str, v2_name: &str, v3_name: &str) {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let v2 = Upstream::start(Behavior::Answer("v2")).await;
    let v3 = Upstream::start(Behavior::Answer("v3")).await;
    let cfg = example(
        path,
        &[
            (9001, v1.addr.port()),
            (9002, v2.addr.port()),
            (9003, v3.addr.port()),
        ],
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    let n = 2000;
    let mut answered_by_v2 = 0;
    for i in 0..n {
        let (st, h, body) =
            get_with(&c, &proxy.url(&format!("/reviews/{i}")), &[("host", host)]).await;
        assert_eq!(st, 200);
        assert_eq!(
            h.get("x-served-by").map(|v| v.as_bytes()),
            Some(&b"mirrorctl"[..])
        );
        if &body[..] == b"v2" {
            answered_by_v2 += 1;
        }
    }
    // 90/10: sd = sqrt(2000 · 0.1 · 0.9) ≈ 13.4; allow 5 sd.
    assert!(
        (answered_by_v2 as f64 - 200.0).abs() <= 67.0,
        "v2 answered {answered_by_v2}"
    );
    let done2 = proxy
        .wait_metric(&mirror_series(route, v2_name, "succeeded"), |v| {
            v >= n as f64
        })
        .await;
    assert_eq!(done2, n as f64, "the 100 % mirror got every request");
    let sent3 = proxy.metric(&mirror_series(route, v3_name, "sent")).await;
    // 25 %: sd ≈ 19.4; allow 5 sd.
    assert!((sent3 - 500.0).abs() <= 97.0, "v3 mirrored {sent3}");
    proxy
        .wait_metric(&mirror_series(route, v3_name, "succeeded"), |v| v >= sent3)
        .await;
    let at_v2 = v2.drain().await;
    let mirrored_to_v2 = at_v2
        .iter()
        .filter(|r| r.header("x-mirrorctl-shadow").is_some())
        .count();
    assert_eq!(mirrored_to_v2, n);
    assert_eq!(at_v2.len() - mirrored_to_v2, answered_by_v2);
    assert_eq!(v3.drain().await.len() as f64, sent3);
    assert_eq!(v1.drain().await.len(), n - answered_by_v2);
    proxy.stop().await;
}

#[tokio::test]
async fn istio_canary_90_10_with_two_mirrors() {
    canary(
        "examples/istio/canary-90-10.yaml",
        "reviews.example.com",
        "reviews-canary",
        "reviews/v2",
        "reviews/v3",
    )
    .await;
}

#[tokio::test]
async fn native_canary_90_10_with_two_mirrors() {
    canary(
        "examples/native/canary-90-10.yaml",
        "anything",
        "reviews-canary",
        "v2",
        "v3",
    )
    .await;
}

#[tokio::test]
async fn native_seed_example_mirrors_to_the_test_subset() {
    let v1 = Upstream::start(Behavior::Answer("v1")).await;
    let test_v1 = Upstream::start(Behavior::Answer("test-v1")).await;
    let cfg = example(
        "examples/native/seed-mirror.yaml",
        &[(9001, v1.addr.port()), (9002, test_v1.addr.port())],
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let (st, _, body) = get_with(&client(), &proxy.url("/hello"), &[("host", "my-app")]).await;
    assert_eq!((st.as_u16(), &body[..]), (200, &b"v1"[..]));
    assert_eq!(test_v1.next().await.header("host"), Some("my-app-shadow"));
    proxy.stop().await;
}

#[tokio::test]
async fn retries_apply_to_the_primary_only_and_never_resend_a_mirror() {
    let primary = Upstream::start(Behavior::FailFirst(2, 503)).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let cfg = write_cfg(
        "retries",
        &format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
routes:
  - name: default
    retries: {{attempts: 3, retry_on: '503'}}
    route: [{{destination: v1}}]
    mirrors: [{{destination: v2}}]
",
            primary.addr, shadow.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    let (st, _, body) = get_with(&c, &proxy.url("/r"), &[]).await;
    assert_eq!(
        (st.as_u16(), &body[..]),
        (200, &b"ok"[..]),
        "third attempt succeeds"
    );
    assert_eq!(primary.received(), 3);
    shadow.next().await;
    assert!(
        shadow
            .next_within(Duration::from_millis(200))
            .await
            .is_none(),
        "one mirror for three attempts"
    );
    // A POST (not idempotent) is never retried.
    let primary_before = primary.received();
    let req = http::Request::post(proxy.url("/w"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .expect("req");
    let (st, _) = send(&c, req).await;
    assert_eq!(st, 200, "primary is healthy again");
    assert_eq!(primary.received(), primary_before + 1);
    proxy.stop().await;
}

#[tokio::test]
async fn post_is_not_retried() {
    let primary = Upstream::start(Behavior::FailFirst(1, 503)).await;
    let cfg = write_cfg(
        "noretry",
        &format!(
            "listeners: [127.0.0.1:0]
services: [{{name: v1, endpoints: ['{}']}}]
routes:
  - {{name: default, retries: {{attempts: 3, retry_on: 5xx}}, route: [{{destination: v1}}]}}
",
            primary.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let req = http::Request::post(proxy.url("/w"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .expect("req");
    let (st, _) = send(&client(), req).await;
    assert_eq!(st, 503, "the primary's answer, not a retry");
    assert_eq!(primary.received(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn rewrite_and_header_changes_reach_primary_and_mirror() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let cfg = write_cfg(
        "rewrite",
        &format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: v2, endpoints: ['{}']}}
routes:
  - name: api
    match: [{{uri: {{prefix: /api}}, ignoreUriCase: true}}]
    rewrite: {{uri: /v2, authority: internal.example}}
    headers:
      request: {{set: {{x-env: prod}}, add: {{x-tag: b}}, remove: [x-secret]}}
      response: {{set: {{x-route: api}}, remove: [server]}}
    route: [{{destination: v1}}]
    mirrors: [{{destination: v2}}]
",
            primary.addr, shadow.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let (st, h, _) = get_with(
        &client(),
        &proxy.url("/API/users?id=7"),
        &[("x-secret", "s"), ("x-tag", "a"), ("x-env", "dev")],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(h.get("x-route").map(|v| v.as_bytes()), Some(&b"api"[..]));
    for r in [primary.next().await, shadow.next().await] {
        assert_eq!(r.target, "/v2/users?id=7");
        assert_eq!(r.header("x-env"), Some("prod"));
        assert_eq!(r.headers.get_all("x-tag").iter().count(), 2);
        assert_eq!(r.header("x-secret"), None);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn consistent_sampling_sends_the_same_requests_to_every_shadow() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let a = Upstream::start(Behavior::Answer("a")).await;
    let b = Upstream::start(Behavior::Answer("b")).await;
    let cfg = write_cfg(
        "consistent",
        &format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: v1, endpoints: ['{}']}}
  - {{name: a, endpoints: ['{}']}}
  - {{name: b, endpoints: ['{}']}}
routes:
  - name: default
    mirror_sampling: request_id
    route: [{{destination: v1}}]
    mirrors: [{{destination: a, percent: 30}}, {{destination: b, percent: 30}}]
",
            primary.addr, a.addr, b.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    for round in 0..2 {
        for i in 0..200 {
            let id = format!("req-{i}");
            get_with(&c, &proxy.url("/"), &[("x-request-id", &id)]).await;
        }
        let sent = |s: &'static str| mirror_series("default", s, "sent");
        let na = proxy.metric(&sent("a")).await;
        proxy
            .wait_metric(&mirror_series("default", "a", "succeeded"), |v| v >= na)
            .await;
        let nb = proxy.metric(&sent("b")).await;
        proxy
            .wait_metric(&mirror_series("default", "b", "succeeded"), |v| v >= nb)
            .await;
        let ids = |rs: Vec<Recorded>| {
            let mut v: Vec<String> = rs
                .iter()
                .filter_map(|r| r.header("x-request-id").map(str::to_owned))
                .collect();
            v.sort();
            v
        };
        let got_a = ids(a.drain().await);
        let got_b = ids(b.drain().await);
        assert_eq!(got_a, got_b, "round {round}: the same ids at both shadows");
        assert!(
            got_a.len() > 20 && got_a.len() < 120,
            "about 30 % of 200: {}",
            got_a.len()
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let bad = Upstream::start(Behavior::Status(500)).await;
    let good = Upstream::start(Behavior::Answer("good")).await;
    let cfg = write_cfg(
        "outlier",
        &format!(
            "listeners: [127.0.0.1:0]
services:
  - name: v1
    endpoints: ['{}', '{}']
    outlier_detection: {{consecutive_5xx_errors: 3, base_ejection_time: 60s, max_ejection_percent: 50}}
routes:
  - {{name: default, route: [{{destination: v1}}]}}
",
            bad.addr, good.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get_with(&c, &proxy.url("/"), &[]).await.0.as_u16());
    }
    assert_eq!(
        bad.received(),
        3,
        "ejected after 3 consecutive 5xx: {statuses:?}"
    );
    assert!(statuses[10..].iter().all(|s| *s == 200), "{statuses:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn regex_authority_and_query_matches_route_requests() {
    let a = Upstream::start(Behavior::Answer("a")).await;
    let b = Upstream::start(Behavior::Answer("b")).await;
    let cfg = write_cfg(
        "matches",
        &format!(
            "listeners: [127.0.0.1:0]
services:
  - {{name: a, endpoints: ['{}']}}
  - {{name: b, endpoints: ['{}']}}
routes:
  - name: users
    match:
      - uri: {{regex: '/users/[0-9]+'}}
        authority: {{prefix: api.}}
        queryParams: {{debug: {{exact: '1'}}}}
        withoutHeaders: {{x-block: {{}}}}
    route: [{{destination: b}}]
  - {{name: default, route: [{{destination: a}}]}}
",
            a.addr, b.addr
        ),
    );
    let proxy = Proxy::start(config_flags(&[cfg])).await;
    let c = client();
    // (path, headers, the service that must answer)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        ("/users/42?debug=1", &[("host", "api.example")], "b"),
        ("/users/42?debug=0", &[("host", "api.example")], "a"),
        ("/users/x?debug=1", &[("host", "api.example")], "a"),
        ("/users/42?debug=1", &[("host", "web.example")], "a"),
        (
            "/users/42?debug=1",
            &[("host", "api.example"), ("x-block", "1")],
            "a",
        ),
    ];
    for (path, headers, want) in cases {
        let (_, _, body) = get_with(&c, &proxy.url(path), headers).await;
        assert_eq!(String::from_utf8_lossy(&body), want, "{path} {headers:?}");
    }
    proxy.stop().await;
}
