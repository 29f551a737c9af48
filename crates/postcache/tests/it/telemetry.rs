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
    let mut answered = Vec::new();
    for line in lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
        if entry["fields"]["message"] == "finished processing request" {
            answered.push(entry);
        }
    }
    // At debug, each answer is logged inside its request's span: status, latency, request id.
    let health = answered
        .iter()
        .find(|e| e["span"]["path"] == "/readyz")
        .unwrap_or_else(|| panic!("no answer to /readyz logged:\n{logs}"));
    assert_eq!(health["fields"]["status"], 200, "{health}");
    assert!(health["fields"]["latency_us"].is_u64(), "{health}");
    assert_eq!(health["span"]["name"], "request", "{health}");
    assert!(
        health["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{health}"
    );
}

/// `openssl s_server` with a certificate of a test CA, as an HTTPS collector: it prints what it
/// receives (and its handshake failures) to a file. Killed on drop.
struct TlsCollector {
    child: std::process::Child,
    out: std::path::PathBuf,
    port: u16,
}

impl TlsCollector {
    fn start(ca: &postcache_testkit::TestCa, dir: &std::path::Path, name: &str) -> TlsCollector {
        let port = free_port();
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).unwrap();
        // Unbuffered: what it printed must be in the file when it is killed.
        let child = std::process::Command::new("stdbuf")
            .args([
                "-o0",
                "-e0",
                "openssl",
                "s_server",
                "-accept",
                &port.to_string(),
                "-cert",
            ])
            .arg(ca.cert())
            .arg("-key")
            .arg(ca.key())
            .stdin(std::process::Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let ready = out.clone();
        postcache_testkit::wait_until(
            "s_server to listen",
            std::time::Duration::from_secs(10),
            || match std::fs::read(&ready) {
                Ok(text) if String::from_utf8_lossy(&text).contains("ACCEPT") => Ok(()),
                _ => Err("not listening yet".to_owned()),
            },
        );
        TlsCollector { child, out, port }
    }

    /// What it printed (the request bodies are protobuf: not UTF-8).
    fn seen(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }
}

impl Drop for TlsCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `https://` collector with a private CA: trusted with `POSTCACHE_OTLP_CA_FILE`, the export
/// arrives; without it, the public roots do not know the CA and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_only_when_its_ca_is_trusted() {
    let certs = tempfile::tempdir().unwrap();
    let ca = postcache_testkit::TestCa::create(certs.path());
    let ca_file = ca.ca().display().to_string();
    for trusted in [true, false] {
        let collector = TlsCollector::start(&ca, certs.path(), &format!("collector-{trusted}"));
        let endpoint = format!("https://localhost:{}", collector.port);
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_OTLP_ENDPOINT", endpoint.as_str()),
        ];
        if trusted {
            env.push(("POSTCACHE_OTLP_CA_FILE", ca_file.as_str()));
        }
        let mut child = serve(dir.path(), &env);
        let base = format!("http://{listen}");
        wait_healthy(&base, &mut child);
        reqwest::get(format!("{base}/v1/posts")).await.unwrap();
        // SIGTERM flushes the batch of spans.
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        wait_exit(&mut child);
        let seen = collector.seen();
        assert_eq!(
            seen.contains("POST /v1/traces"),
            trusted,
            "trusted CA: {trusted}; the collector saw:\n{seen}\nserver log:\n{}",
            stderr_of(dir.path())
        );
    }
}
