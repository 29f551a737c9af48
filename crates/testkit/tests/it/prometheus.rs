use std::net::SocketAddr;
use std::time::Duration;

use postcache_testkit::{Prometheus, ScrapeTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::eventually;

/// A target that serves one gauge in the Prometheus text format.
async fn serve_metrics() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let body = "# TYPE smoke_value gauge\nsmoke_value 42\n";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_target_and_evaluates_rules() {
    let target = serve_metrics().await;
    let rules = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rules.path(),
        "groups:\n  - name: smoke\n    rules:\n      - record: smoke:doubled\n        expr: smoke_value * 2\n",
    )
    .unwrap();
    let job = ScrapeTarget {
        job: "smoke".into(),
        addr: target,
        path: "/metrics".into(),
        labels: vec![],
    };
    let prometheus = Prometheus::start(&[job], &[rules.path()]);

    let scraped = eventually("the scraped gauge", Duration::from_secs(30), || {
        prometheus.query(r#"smoke_value{job="smoke"}"#)
    })
    .await;
    assert_eq!(scraped, 42.0);
    let recorded = eventually("the recording rule", Duration::from_secs(30), || {
        prometheus.query("smoke:doubled")
    })
    .await;
    assert_eq!(recorded, 84.0);
    let up = eventually("up", Duration::from_secs(30), || {
        prometheus.query(r#"up{job="smoke"}"#)
    })
    .await;
    assert_eq!(up, 1.0);
}
