//! `mirrorctl demo`: a built-in v1 (primary) and v2 (shadow) behind the proxy, mirroring at
//! 100 %. Each upstream prints what it receives, so the mirror is visible next to the two
//! access-log lines that share a request id. `--requests N` drives traffic itself and exits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::flags::{self, ServeFlags};
use crate::telemetry::Metrics;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "IP:PORT")]
    pub listen: String,
    /// Admin listener (metrics).
    #[arg(long, default_value = "127.0.0.1:9901", value_name = "IP:PORT")]
    pub admin: String,
    /// Send this many requests through the proxy, print the answers and exit.
    #[arg(long, value_name = "N")]
    pub requests: Option<u32>,
}

/// A tiny upstream that answers `hello from NAME` and prints each request it receives.
async fn upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let svc = service_fn(move |req: Request<Incoming>| async move {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                println!(
                    "[{name}] received {} {} host={host} request_id={id}",
                    req.method(),
                    req.uri()
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "hello from {name}\n"
                )))))
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing();
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let v1 = upstream("v1").await?;
        let v2 = upstream("v2").await?;
        let f = ServeFlags {
            listen: vec![a.listen.clone()],
            primary: Some(format!("http://{v1}")),
            shadow: vec![format!("http://{v2}")],
            mirror_percent: Some(100.0),
            admin: Some(a.admin.clone()),
            ..ServeFlags::default()
        };
        let metrics = Arc::new(Metrics::new());
        let cfg = flags::load(&f, &metrics).map_err(|e| anyhow::anyhow!("{e}"))?;
        let running = crate::proxy::start(cfg, metrics).await?;
        let proxy = running.listen_addrs[0];
        println!("v1 (primary) on {v1}, v2 (shadow) on {v2}");
        println!("proxy on {proxy}: every request is answered by v1 and mirrored to v2");
        println!("metrics: curl http://{}/metrics", a.admin);
        match a.requests {
            Some(n) => {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                for i in 0..n {
                    let uri: http::Uri = format!("http://{proxy}/hello?n={i}").parse()?;
                    let resp = client.get(uri).await?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await?.to_bytes();
                    println!(
                        "client got {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    );
                }
                // Let the last mirrors land before stopping.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            None => {
                println!("try: curl -i http://{proxy}/hello   (Ctrl-C to stop)");
                tokio::signal::ctrl_c().await?;
            }
        }
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
