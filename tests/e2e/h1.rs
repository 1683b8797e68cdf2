//! The client-facing HTTP/1.1 server on raw sockets: pipelining, HTTP/1.0 keep-alive and
//! close, `Expect: 100-continue`, chunked request bodies, and the response framing it writes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Read one response (head, then a `content-length` body) from `s`, keeping what follows in
/// `buf`. `None` when the connection ends first.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    read_response(s, buf, false).await
}

/// [`response`], for an answer to HEAD (its `content-length` announces no body here).
async fn head_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    read_response(s, buf, true).await
}

async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    bodiless: bool,
) -> Option<(String, Vec<u8>)> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|_| !bodiless)
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    return Some((head, body));
                }
            }
            let mut chunk = [0u8; 8192];
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    })
    .await
    .expect("a response before the deadline")
}

/// The connection ends (end of stream) before the deadline, with nothing more sent.
async fn closes(s: &mut TcpStream, buf: &[u8]) {
    assert!(buf.is_empty(), "unexpected bytes: {buf:?}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "unexpected bytes: {rest:?}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let primary = Upstream::start(Behavior::ByPath(std::sync::Arc::new(|p: &str| {
        (200, "text/plain", format!("answer to {p}"))
    })))
    .await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    // Three requests in one write; the last asks to close.
    s.write_all(
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
          HEAD /b HTTP/1.1\r\nhost: x\r\n\r\n\
          GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    let (h, b) = response(&mut s, &mut buf).await.expect("first");
    assert!(h.starts_with("http/1.1 200 ok\r\n"), "{h}");
    assert!(h.contains("\r\ndate: "), "a date header: {h}");
    assert!(!h.contains("connection: close"), "{h}");
    assert_eq!(b, b"answer to /a");
    // HEAD: the upstream's length, no body (the next response follows at once).
    let (h, _) = head_response(&mut s, &mut buf).await.expect("second");
    assert!(h.contains("content-length: 12"), "{h}");
    let (h, b) = response(&mut s, &mut buf).await.expect("third");
    assert!(h.contains("connection: close"), "{h}");
    assert_eq!(b, b"answer to /c");
    closes(&mut s, &buf).await;
    let targets: Vec<String> = primary
        .drain()
        .await
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(targets, ["/a", "/b", "/c"]);
}

#[tokio::test]
async fn http10_clients_get_keep_alive_only_when_they_ask() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;

    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let (h, b) = response(&mut s, &mut buf).await.expect("answer");
    assert!(h.contains("connection: close"), "{h}");
    assert_eq!(b, b"v1");
    closes(&mut s, &buf).await;

    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let (h, b) = response(&mut s, &mut buf).await.expect("answer");
        assert!(h.contains("connection: keep-alive"), "{h}");
        assert_eq!(b, b"v1");
    }
}

#[tokio::test]
async fn expect_100_continue_and_chunked_bodies_reach_the_upstream_whole() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let proxy = Proxy::start(flags(&primary.url(), &[])).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();

    // The client waits for 100 Continue before it sends the body (as curl does over 1 KiB).
    s.write_all(
        b"PUT /up HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("head");
    let (h, _) = response(&mut s, &mut buf).await.expect("interim");
    assert!(h.starts_with("http/1.1 100 continue\r\n"), "{h}");
    s.write_all(b"hello").await.expect("body");
    let (h, b) = response(&mut s, &mut buf).await.expect("answer");
    assert!(h.starts_with("http/1.1 200 ok\r\n"), "{h}");
    assert_eq!(b, b"v1");
    let got = primary.next().await;
    assert_eq!((got.body_len, got.body_sha256), (5, sha256(b"hello")));

    // A chunked body in pieces, on the same connection: the upstream gets it whole.
    s.write_all(b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc")
        .await
        .expect("first chunk");
    tokio::task::yield_now().await;
    s.write_all(b"\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n")
        .await
        .expect("rest");
    let (h, b) = response(&mut s, &mut buf).await.expect("answer");
    assert!(h.starts_with("http/1.1 200 ok\r\n"), "{h}");
    assert_eq!(b, b"v1");
    let got = primary.next().await;
    assert_eq!(got.target, "/chunked");
    assert_eq!((got.body_len, got.body_sha256), (7, sha256(b"abcdefg")));

    // A broken chunked body fails that request and closes the connection.
    s.write_all(b"POST /bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        .await
        .expect("bad chunk");
    let (h, _) = response(&mut s, &mut buf).await.expect("answer");
    assert!(h.starts_with("http/1.1 400 "), "{h}");
    closes(&mut s, &buf).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_send_timeout() {
    const BIG: usize = 32 << 20; // more than the socket buffers on both sides hold
    let primary = Upstream::start(Behavior::ByPath(std::sync::Arc::new(|_: &str| {
        (200, "text/plain", "x".repeat(BIG))
    })))
    .await;
    let mut f = flags(&primary.url(), &[]);
    f.send_timeout = Some("200ms".into());
    let proxy = Proxy::start(f).await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    // The client reads nothing: once the buffers are full the proxy's writes wait, and after
    // 200 ms of that it gives up on the client. (A timeout cannot be tested without waiting
    // past it: 1.5 s here.)
    primary.next().await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let ended = tokio::time::timeout(DEADLINE, async {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        got < BIG,
        "the whole response arrived ({got} bytes): nothing was cut"
    );
}

/// `--header-timeout` counts from accept: a head that is not complete by then (however
/// recently its last piece came) closes the connection unanswered; a connection whose first
/// head came in time may then stay idle past it (the keep-alive timeout applies, not this one).
#[tokio::test]
async fn the_first_head_must_be_complete_within_the_header_timeout_from_accept() {
    let primary = Upstream::start(Behavior::Answer("v1")).await;
    let mut f = flags(&primary.url(), &[]);
    f.header_timeout = Some("400ms".into());
    let proxy = Proxy::start(f).await;

    // Counted from accept, not from the first byte: nothing for 300 ms, a piece, 300 ms more
    // (600 ms after accept, 300 ms after the first byte), then the rest of the head — too late.
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = slow.write_all(b"GET /slow HTTP/1.1\r\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = slow.write_all(b"host: a\r\n\r\n").await;
    // Closed, unanswered.
    closes(&mut slow, &[]).await;

    // In time: answered, then idle for longer than the header timeout, then answered again.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = response(&mut s, &mut buf).await.expect("answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"v1");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = response(&mut s, &mut buf)
        .await
        .expect("answered after idling");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"v1");
    assert_eq!(
        primary.received(),
        2,
        "the trickled head never reached the primary"
    );
    proxy.stop().await;
}

/// A WebSocket upgrade (HTTP/1.1): the primary's `101` reaches the client and the two
/// connections are joined both ways — bytes the client sent right after its head and bytes the
/// primary sent right after its `101` included — until the client ends; the request reaches
/// the primary with `Upgrade`/`Connection` and the proxy's headers, and no shadow gets a copy.
#[tokio::test]
async fn a_websocket_upgrade_is_tunnelled_to_the_primary_and_never_mirrored() {
    let (listener, addr) = raw_upstream().await;
    let primary = tokio::spawn(async move {
        // 1: the upgrade. Echo upper-cased until the end of the client's stream.
        let (mut s, head, mut pending) = accept_head(&listener).await;
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello",
        )
        .await
        .expect("write");
        let mut b = [0u8; 4096];
        loop {
            if !pending.is_empty() {
                s.write_all(&pending.to_ascii_uppercase())
                    .await
                    .expect("echo");
                pending.clear();
            }
            let n = s.read(&mut b).await.expect("read");
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&b[..n]);
        }
        drop(s);
        // 2: a plain request afterwards.
        let (mut s, _, _) = accept_head(&listener).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nv1")
            .await
            .expect("write");
        head
    });
    let shadow = Upstream::start(Behavior::Answer("v2")).await;
    let proxy = Proxy::start(flags(&format!("http://{addr}"), &[shadow.url()])).await;

    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    read_until_has(&mut c, &mut got, b"EARLY").await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(
        text.starts_with("http/1.1 101 switching protocols\r\n"),
        "{text}"
    );
    for h in [
        "upgrade: websocket\r\n",
        "connection: upgrade\r\n",
        "sec-websocket-accept: ",
    ] {
        assert!(text.contains(h), "{h} in {text}");
    }
    assert!(
        text.contains("\r\n\r\nhello"),
        "the primary's first bytes: {text}"
    );
    c.write_all(b"ping").await.expect("write");
    read_until_has(&mut c, &mut got, b"PING").await;
    // The client ends: the primary sees the end, closes, and so does the proxy.
    c.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut rest))
        .await
        .expect("closed after both ends")
        .expect("read");

    // Plain traffic still flows; the shadow's first copy is of it, not of the upgrade.
    let (st, body) = get(&client(), &proxy.url("/after")).await;
    assert_eq!((st.as_u16(), &body[..]), (200, &b"v1"[..]));
    let head = primary.await.expect("primary");
    for h in [
        "get /chat http/1.1\r\n",
        "upgrade: websocket\r\n",
        "connection: upgrade\r\n",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-request-id: ",
    ] {
        assert!(head.contains(h), "{h} in {head}");
    }
    assert_eq!(shadow.next().await.target, "/after");
    assert_eq!(shadow.received(), 1);
    proxy.stop().await;
}

/// Only WebSocket upgrades are proxied: an `h2c` upgrade reaches the primary as a plain request
/// (no `Upgrade`), and a `101` to a request that did not ask for one is a 502, not a tunnel.
#[tokio::test]
async fn other_upgrades_are_plain_requests_and_an_unasked_101_is_a_502() {
    let (listener, addr) = raw_upstream().await;
    let primary = tokio::spawn(async move {
        let (mut s, first, _) = accept_head(&listener).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
            .await
            .expect("write");
        let mut buf = Vec::new();
        read_until_has(&mut s, &mut buf, b"\r\n\r\n").await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            .await
            .expect("write");
        first
    });
    let proxy = Proxy::start(flags(&format!("http://{addr}"), &[])).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    c.write_all(b"GET /h2c HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = response(&mut c, &mut buf).await.expect("answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"plain");
    c.write_all(b"GET /switch HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let (head, body) = response(&mut c, &mut buf).await.expect("answered");
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("101 Switching Protocols without an upgrade"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let first = primary.await.expect("primary");
    assert!(first.starts_with("get /h2c http/1.1\r\n"), "{first}");
    assert!(!first.contains("upgrade"), "{first}");
    assert!(!first.contains("http2-settings"), "{first}");
    proxy.stop().await;
}

/// A `101` is tunnelled only as a switch to the WebSocket the client asked for: the client's
/// other offers never reach the primary, and a primary that switches to something else gets
/// the client a 502. (A route cannot add `Upgrade`: config refuses hop-by-hop headers.)
#[tokio::test]
async fn a_101_not_to_the_clients_websocket_is_a_502() {
    let (listener, addr) = raw_upstream().await;
    let primary = tokio::spawn(async move {
        let (mut s, head, _) = accept_head(&listener).await;
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
        )
        .await
        .expect("write");
        // Held until the proxy lets go of it.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest)).await;
        head
    });
    let proxy = Proxy::start(flags(&format!("http://{addr}"), &[])).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .expect("write");
    let (head, body) = response(&mut c, &mut buf).await.expect("answered");
    assert!(head.starts_with("http/1.1 502"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("not to the WebSocket the client asked for"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let head = primary.await.expect("primary");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(!head.contains("h2c"), "{head}");
    proxy.stop().await;
}

/// Stopping the server closes an open WebSocket tunnel at once (it does not hold shutdown for
/// the whole shutdown timeout): both the client and the primary see their connection end.
#[tokio::test]
async fn stopping_the_server_closes_an_open_tunnel() {
    let (listener, addr) = raw_upstream().await;
    let primary = tokio::spawn(async move {
        let (mut s, _, _) = accept_head(&listener).await;
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nopen")
            .await
            .expect("write");
        // Quiet until the proxy ends the connection.
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
            .await
            .expect("the proxy ends the upstream connection")
            .expect("read");
    });
    let mut f = flags(&format!("http://{addr}"), &[]);
    f.shutdown_timeout = Some("60s".into());
    let proxy = Proxy::start(f).await;
    let mut c = TcpStream::connect(proxy.addr).await.expect("connect");
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    read_until_has(&mut c, &mut got, b"open").await;
    // Well under the 60 s shutdown timeout.
    tokio::time::timeout(DEADLINE, proxy.stop())
        .await
        .expect("shutdown does not wait for the tunnel");
    closes(&mut c, &[]).await;
    tokio::time::timeout(DEADLINE, primary)
        .await
        .expect("primary side ended")
        .expect("primary");
}
