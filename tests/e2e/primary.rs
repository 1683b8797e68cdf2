//! The primary path: what the client gets and what the primary receives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::sync::Semaphore;

use crate::support::*;

#[tokio::test]
async fn primary_answers_and_headers_are_cleaned() {
    let primary = Upstream::start(Behavior::Answer("from v1\n")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let c = client();
    let req = Request::get(proxy.url("/hello?a=1&b=2"))
        .header("host", "my-app.example:8080")
        .header("x-forwarded-for", "10.1.2.3")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (st, body) = send(&c, req).await;
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"from v1\n");
    let got = primary.next().await;
    assert_eq!(got.target, "/hello?a=1&b=2");
    assert_eq!(
        got.header("host"),
        Some("my-app.example:8080"),
        "Host preserved"
    );
    assert_eq!(got.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(got.header("x-custom"), Some("kept"));
    assert_eq!(
        got.header("x-hop"),
        None,
        "Connection-listed header stripped"
    );
    assert_eq!(got.header("keep-alive"), None);
    assert_eq!(got.header("x-mirrorctl-shadow"), None);
    let id = got.header("x-request-id").expect("request id generated");
    assert_eq!(id.len(), 36);
    proxy.stop().await;
}

#[tokio::test]
async fn client_request_id_is_kept() {
    let primary = Upstream::start(Behavior::Answer("ok")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let req = Request::get(proxy.url("/"))
        .header("x-request-id", "req-123")
        .body(Full::new(Bytes::new()))
        .expect("req");
    send(&client(), req).await;
    assert_eq!(primary.next().await.header("x-request-id"), Some("req-123"));
    proxy.stop().await;
}

#[tokio::test]
async fn unreachable_primary_is_502_with_reason() {
    let dead = closed_port().await;
    let proxy = Proxy::start(flags(&format!("http://{dead}"), &[])).await;
    let (st, body) = get(&client(), &proxy.url("/x")).await;
    assert_eq!(st, 502);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("upstream connect error"), "{text}");
    assert!(text.contains(&dead.to_string()), "{text}");
    proxy.stop().await;
}

#[tokio::test]
async fn slow_primary_is_504() {
    let gate = Arc::new(Semaphore::new(0));
    let primary = Upstream::start(Behavior::Hold(gate.clone())).await;
    let mut f = flags(&primary.url(), &[]);
    f.request_timeout = Some("200ms".into());
    let proxy = Proxy::start(f).await;
    let (st, body) = get(&client(), &proxy.url("/slow")).await;
    assert_eq!(st, 504);
    assert!(String::from_utf8_lossy(&body).contains("upstream timeout"));
    gate.add_permits(10);
    proxy.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let primary = Upstream::start(Behavior::Answer("h2 ok")).await;
    let shadow = Upstream::start(Behavior::Answer("shadow")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[shadow.url()])).await;
    let c: TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = Request::get(proxy.url("/h2?x=1"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .expect("req");
    let (st, body) = send(&c, req).await;
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"h2 ok");
    let p = primary.next().await;
    let host = proxy.addr.to_string();
    assert_eq!(
        p.header("host"),
        Some(host.as_str()),
        ":authority becomes Host"
    );
    let s = shadow.next().await;
    assert_eq!(s.target, "/h2?x=1");
    assert_eq!(s.header("x-request-id"), p.header("x-request-id"));
    proxy.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let primary = Upstream::start(Behavior::Answer("ok")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let no_host = raw(proxy.addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("missing Host"), "{no_host}");
    let two_hosts = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let garbage = raw(proxy.addr, b"NOT A REQUEST\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(primary
        .next_within(Duration::from_millis(200))
        .await
        .is_none());
    // The proxy still serves.
    let (st, _) = get(&client(), &proxy.url("/")).await;
    assert_eq!(st, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let gate = Arc::new(Semaphore::new(0));
    let primary = Upstream::start(Behavior::Hold(gate.clone())).await;
    let mut proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let url = proxy.url("/in-flight");
    let c = client();
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    primary.next().await; // the request reached the primary
    let running = proxy.running.take().expect("running");
    let addr = proxy.addr;
    let shutdown = tokio::spawn(running.shutdown());
    // New connections are refused once the listener is closed.
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        if tokio::time::Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after shutdown began");
    gate.add_permits(1);
    let (st, body) = in_flight.await.expect("join");
    assert_eq!(st, 200);
    assert_eq!(&body[..], b"held\n");
    tokio::time::timeout(DEADLINE, shutdown)
        .await
        .expect("shutdown done")
        .expect("join");
}

/// An upstream that answers in full before reading the request body, then reads and discards
/// it (nginx's `return` does this): two 64 KiB POSTs on one client connection, each with the
/// second half of its body sent only after the whole answer arrived: both get the answer on the
/// one client connection (it stays usable) and both bodies reach the upstream whole.
#[tokio::test]
async fn an_upstream_answering_before_the_body_keeps_both_connections_usable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (bodies_tx, mut bodies) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let upstream = tokio::spawn(async move {
        // Connections in turn or at once: the proxy may open a second one while the first
        // is still taking the rest of a body.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let bodies_tx = bodies_tx.clone();
            conns.spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("content-length");
                    buf.drain(..head_end);
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                        .await
                        .expect("answer");
                    while buf.len() < len {
                        let mut chunk = [0u8; 8192];
                        let n = s.read(&mut chunk).await.expect("read body");
                        assert!(n > 0, "closed in a body");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let _ = bodies_tx.send(len);
                    buf.drain(..len);
                }
            });
        }
    });
    let proxy = Proxy::start(flags(&format!("http://{addr}"), &[])).await;
    let mut c = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let body = vec![b'x'; 64 * 1024];
    let mut answers = String::new();
    for _ in 0..2 {
        c.write_all(b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 65536\r\n\r\n")
            .await
            .expect("head");
        // Half the body; the whole answer comes back before the other half is sent.
        c.write_all(&body[..32 * 1024]).await.expect("body");
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, async {
            while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"early")) {
                let mut chunk = [0u8; 4096];
                let n = c.read(&mut chunk).await.expect("read");
                assert!(n > 0, "the proxy closed the client's connection: {got:?}");
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("answer before the deadline");
        c.write_all(&body[32 * 1024..])
            .await
            .expect("rest of the body");
        answers.push_str(&String::from_utf8_lossy(&got));
    }
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    // Both bodies reached the upstream whole.
    for _ in 0..2 {
        let len = tokio::time::timeout(DEADLINE, bodies.recv())
            .await
            .expect("a body before the deadline");
        assert_eq!(len, Some(65536));
    }
    upstream.abort();
    proxy.stop().await;
}
