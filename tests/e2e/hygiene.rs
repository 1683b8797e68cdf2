//! Request hygiene on raw sockets: what is refused, with which status, and that neither the
//! primary nor the shadow ever sees a refused request.

use std::time::Duration;

use crate::support::*;

async fn status_line(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    raw(addr, bytes)
        .await
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Neither upstream receives anything more: 200 ms for the primary (the proxy would have
/// forwarded by then), 50 ms more for the shadow (copies go after the primary's).
async fn nothing_more_reached(primary: &Upstream, shadow: &Upstream) {
    assert!(primary
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    assert!(shadow
        .next_within(Duration::from_millis(50))
        .await
        .is_none());
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_refused_before_any_upstream() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let many_headers: Vec<u8> = (0..150)
        .flat_map(|i| format!("X-{i}: 1\r\n").into_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), "400"),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "obfuscated TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "TE on HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "two different Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            "400",
        ),
        (
            "two equal Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"
                .to_vec(),
            "400",
        ),
        (
            "invalid Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\na".to_vec(),
            "400",
        ),
        (
            "control character in a value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n".to_vec(),
            "400",
        ),
        ("not HTTP", b"HELLO\r\n\r\n".to_vec(), "400"),
        (
            "header over the buffer",
            [
                b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ".as_slice(),
                &vec![b'a'; 500_000],
                b"\r\n\r\n",
            ]
            .concat(),
            "431",
        ),
        (
            "more than 100 headers",
            [
                b"GET / HTTP/1.1\r\nHost: a\r\n".as_slice(),
                &many_headers,
                b"\r\n",
            ]
            .concat(),
            "431",
        ),
        (
            "URI too long",
            [
                b"GET /".as_slice(),
                &vec![b'a'; 70_000],
                b" HTTP/1.1\r\nHost: a\r\n\r\n",
            ]
            .concat(),
            "414",
        ),
    ];
    for (name, bytes, want) in &cases {
        let line = status_line(proxy.addr, bytes).await;
        assert!(
            line.starts_with(&format!("HTTP/1.1 {want}")),
            "{name}: got `{line}`"
        );
    }
    // None of them reached an upstream.
    nothing_more_reached(&primary, &shadow).await;
    proxy.stop().await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_after_it_is_read() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases = [
        format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"),
        format!("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggle}"),
        format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab{smuggle}"),
        format!("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggle}"),
        format!("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggle}"),
    ];
    for case in &cases {
        let reply = raw(proxy.addr, case.as_bytes()).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{case:?}: {reply}");
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
        assert_eq!(
            reply.matches("HTTP/1.1").count(),
            1,
            "one answer only: {reply}"
        );
    }
    // A good request pipelined before a refused one is served; nothing after is read.
    let pipelined = format!("GET /first HTTP/1.1\r\nHost: a\r\n\r\n{}", cases[0]);
    let reply = raw(proxy.addr, pipelined.as_bytes()).await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &reply[i..i + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{reply}");
    assert!(
        reply.contains("Content-Length with Transfer-Encoding"),
        "{reply}"
    );
    assert_eq!(primary.next().await.target, "/first");
    assert_eq!(shadow.next().await.target, "/first");
    nothing_more_reached(&primary, &shadow).await;
    proxy.stop().await;
}

#[tokio::test]
async fn head_limits_are_configurable() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let mut f = flags(&primary.url(), &[]);
    f.max_header_bytes = Some("2KiB".into());
    f.max_headers = Some(5);
    let proxy = Proxy::start(f).await;
    let header = |n: usize| {
        format!(
            "GET /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "b".repeat(n)
        )
    };
    assert!(status_line(proxy.addr, header(1000).as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(status_line(proxy.addr, header(3000).as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(3000));
    assert!(status_line(proxy.addr, uri.as_bytes())
        .await
        .starts_with("HTTP/1.1 414"));
    let six = "GET /h HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
    assert!(status_line(proxy.addr, six.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    assert_eq!(
        primary.next().await.target,
        "/h",
        "only the request within limits"
    );
    assert!(primary
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn the_connection_cap_makes_new_clients_wait_not_fail() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let mut f = flags(&primary.url(), &[]);
    f.max_connections = Some(2);
    let metrics = std::sync::Arc::new(mirrorctl::telemetry::Metrics::new());
    let mut cfg = mirrorctl::config::flags::load(&f, &metrics).expect("config");
    // One worker: its accept loop holds the only free slot (with several workers, a slot
    // reserved by one worker's loop is not available to another's queue: the cap is exact
    // per process only to within one connection per worker).
    cfg.workers = 1;
    let running = mirrorctl::proxy::start(cfg, metrics).await.expect("start");
    let addr = running.listen_addrs[0];
    let p = Proxy {
        addr,
        admin: running.admin_addr.expect("admin"),
        running: Some(running),
    };

    let request = b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n";
    async fn answer(s: &mut tokio::net::TcpStream) -> String {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    // Two keep-alive connections, answered and left open: the cap is full.
    let mut a = tokio::net::TcpStream::connect(addr).await.expect("a");
    a.write_all(request).await.expect("write");
    assert!(tokio::time::timeout(DEADLINE, answer(&mut a))
        .await
        .expect("a answered")
        .starts_with("HTTP/1.1 200"));
    let mut b = tokio::net::TcpStream::connect(addr).await.expect("b");
    b.write_all(request).await.expect("write");
    assert!(tokio::time::timeout(DEADLINE, answer(&mut b))
        .await
        .expect("b answered")
        .starts_with("HTTP/1.1 200"));
    // A third waits in the backlog: no answer while both stay open.
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .expect("c connects (kernel backlog)");
    c.write_all(request).await.expect("write");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), answer(&mut c))
            .await
            .is_err(),
        "served past the cap"
    );
    // One closes: the third is served.
    drop(a);
    let got = tokio::time::timeout(DEADLINE, answer(&mut c))
        .await
        .expect("c answered after a slot freed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    drop((b, c));
    p.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_is_not_mirrored() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.body_timeout = Some("200ms".into());
    let proxy = Proxy::start(f).await;
    // 100 bytes announced, 3 sent, then nothing: `raw` waits (bounded) for the proxy to answer
    // and close.
    let reply = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("client body timeout"), "{reply}");
    let abandoned = proxy
        .wait_metric(
            "mirrorctl_mirror_total{route=\"default\",shadow=\"shadow\",outcome=\"body_incomplete\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(abandoned, 1.0, "the copy is abandoned, not sent half-done");
    assert!(shadow
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_reach_no_upstream_whole() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let mut f = flags(&primary.url(), &[shadow.url()]);
    f.max_body_bytes = Some("1KiB".into());
    let proxy = Proxy::start(f).await;

    // Announced over the limit: refused from the head, before any upstream hears of it
    // (whether or not the client sends the body after it).
    for body in [&b""[..], &[b'x'; 2000][..]] {
        let head = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n";
        let reply = raw(proxy.addr, &[&head[..], body].concat()).await;
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(
            reply.contains("request body larger than 1024 bytes"),
            "{reply}"
        );
        assert!(
            reply.to_ascii_lowercase().contains("connection: close"),
            "{reply}"
        );
    }
    // Chunked, no length: cut where it passes the limit. The primary may have seen the start
    // of it; neither upstream ever gets a whole request, and the copy is abandoned.
    let chunk = format!("258\r\n{}\r\n", "c".repeat(600));
    let chunked = format!(
        "POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n"
    );
    let reply = raw(proxy.addr, chunked.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // (The test upstream records a request whose body failed with the bytes it could collect:
    // none, as hyper's body ends in an error when the proxy aborts the upload.)
    let cut = primary.next().await;
    assert_eq!((cut.target.as_str(), cut.body_len), ("/chunked", 0));
    // Within the limit: served and mirrored.
    let ok = format!(
        "POST /fits HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "f".repeat(1024)
    );
    assert!(status_line(proxy.addr, ok.as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    for up in [&primary, &shadow] {
        let seen = up.next().await;
        assert_eq!(
            (seen.target.as_str(), seen.body_len),
            ("/fits", 1024),
            "nothing before it"
        );
        assert!(up.next_within(Duration::from_millis(200)).await.is_none());
    }
    proxy
        .wait_metric(
            "mirrorctl_mirror_total{route=\"default\",shadow=\"shadow\",outcome=\"body_incomplete\"}",
            |v| v >= 1.0,
        )
        .await;
    proxy.stop().await;
}
