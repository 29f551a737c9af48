//! Logs and traces as an operator sees them: request ids echoed, spans exported over OTLP to a
//! collector, and the API token in neither.

use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{serve, stderr_of, wait_exit, wait_healthy};

/// A stand-in OTLP/HTTP collector on a real socket: records (request head, body) of each POST.
async fn collector() -> (String, Arc<Mutex<Vec<(String, Vec<u8>)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() < end + 4 + length {
                        continue;
                    }
                    let body = data[end + 4..end + 4 + length].to_vec();
                    store.lock().unwrap().push((head, body));
                    data.drain(..end + 4 + length);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").await;
                }
            });
        }
    });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_request_ids_and_without_secrets() {
    let (otlp, seen) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let secret = "tok-7f3a9c-very-secret";
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_API_TOKENS", secret),
        ("POSTCACHE_OTLP_ENDPOINT", otlp.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let mut child = serve(dir.path(), &env);
    let base = format!("http://{listen}");
    wait_healthy(&base, &mut child);

    let http = reqwest::Client::new();
    let reply = http
        .post(format!("{base}/v1/posts"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {secret}"))
        .header("x-request-id", "req-from-the-client-42")
        .body(r#"{"author_id":"ann","title":"traced","body":"b"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    assert_eq!(
        reply.headers()["x-request-id"],
        "req-from-the-client-42",
        "a given request id is echoed"
    );
    let generated = http.get(format!("{base}/v1/posts")).send().await.unwrap();
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a request without one gets a UUID: {id}");

    // SIGTERM flushes the batch of spans.
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
    let logs = stderr_of(dir.path());
    assert!(
        logs.contains("req-from-the-client-42"),
        "log lines carry the request id"
    );
    assert!(!logs.contains(secret), "the token is never logged");

    let exports = seen.lock().unwrap().clone();
    assert!(!exports.is_empty(), "the collector received spans");
    let (head, _) = &exports[0];
    assert!(head.starts_with("post /v1/traces"), "{head}");
    assert!(
        head.contains("content-type: application/x-protobuf"),
        "{head}"
    );
    let bodies: Vec<u8> = exports.into_iter().flat_map(|(_, body)| body).collect();
    let contains = |needle: &[u8]| bodies.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"postcache"), "the service name is in the export");
    assert!(
        contains(b"req-from-the-client-42"),
        "spans carry the request id"
    );
    assert!(!contains(secret.as_bytes()), "the token is never exported");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ];
    let mut child = serve(dir.path(), &env);
    wait_healthy(&format!("http://{listen}"), &mut child);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
    let logs = stderr_of(dir.path());
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
}
