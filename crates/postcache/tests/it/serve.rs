//! Start-up, the embedded default and graceful shutdown.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;

use crate::{create_post, serve, stderr_of, wait_exit, wait_healthy};

#[test]
fn version_and_help_name_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("postcache {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "POSTCACHE_DATABASE_URL",
        "POSTCACHE_API_TOKENS",
        "--insecure-no-auth",
        "POSTCACHE_L1_MAX_ENTRIES",
    ] {
        assert!(help.contains(flag), "`serve --help` lacks {flag}");
    }
}

#[tokio::test]
async fn the_embedded_default_serves_from_a_sqlite_file_and_a_graceful_stop_flushes_views() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    // Views are flushed only at shutdown here: the stop itself must write them.
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_VIEWS_FLUSH_MS", "3600000"),
    ];
    let mut child = serve(dir.path(), &env);
    let base = format!("http://{listen}");
    wait_healthy(&base, &mut child);
    assert!(
        dir.path().join("postcache.db").exists(),
        "the embedded default is ./postcache.db"
    );

    let http = reqwest::Client::new();
    let created = create_post(&http, &base, "ann", "kept").await;
    let id = created["id"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let status = http
            .post(format!("{base}/v1/posts/{id}/views"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    assert!(
        status.success(),
        "a graceful stop exits 0: {status}\n{}",
        stderr_of(dir.path())
    );

    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite:{}",
        dir.path().join("postcache.db").display()
    ))
    .await
    .unwrap();
    let views: i64 = sqlx::query_scalar("SELECT views FROM posts WHERE id = ?1")
        .bind(id.parse::<i64>().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(views, 5, "buffered views were flushed on SIGTERM");

    // Start again on the same file: the post is still there.
    let mut child = serve(dir.path(), &env);
    wait_healthy(&base, &mut child);
    let again: serde_json::Value = http
        .get(format!("{base}/v1/posts/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (again["title"].as_str(), again["views"].as_i64()),
        (Some("kept"), Some(5))
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());
}

#[test]
fn listening_beyond_loopback_needs_tokens_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let mut refused = serve(dir.path(), &[("POSTCACHE_LISTEN", listen.as_str())]);
    let status = wait_exit(&mut refused);
    assert!(!status.success());
    let message = stderr_of(dir.path());
    assert!(
        message.contains("--insecure-no-auth") && message.contains("POSTCACHE_API_TOKENS"),
        "{message}"
    );
    assert!(
        !dir.path().join("postcache.db").exists(),
        "refused before touching the database"
    );

    let local = listen.replace("0.0.0.0", "127.0.0.1");
    let mut allowed = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_API_TOKENS", "t0k3n"),
        ],
    );
    wait_healthy(&format!("http://{local}"), &mut allowed);
    kill(Pid::from_raw(allowed.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut allowed).success());
}

/// A zero flush interval once panicked the maintenance task, which then died silently: it is
/// refused at start with the option named, before anything is touched.
#[test]
fn a_zero_flush_interval_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut refused = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_VIEWS_FLUSH_MS", "0"),
        ],
    );
    assert!(!wait_exit(&mut refused).success());
    let message = stderr_of(dir.path());
    assert!(message.contains("views-flush-ms"), "{message}");
    assert!(!dir.path().join("postcache.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_open_realtime_streams_instead_of_waiting_for_them() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    // A grace period far longer than the test waits: only ending the streams lets it exit in time.
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_SHUTDOWN_GRACE_SECONDS", "120"),
    ];
    let mut child = serve(dir.path(), &env);
    wait_healthy(&format!("http://{listen}"), &mut child);

    let sse = reqwest::get(format!("http://{listen}/v1/events"))
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{listen}/v1/ws"))
        .await
        .unwrap();

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(chunk) = sse.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream ends on SIGTERM");
    let frame = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                | None
                | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(frame.is_ok(), "the WebSocket is closed on SIGTERM");
    assert!(
        wait_exit(&mut child).success(),
        "and the process exits cleanly, long before its grace period"
    );
}

/// `postcache openapi` prints exactly the document a running service serves, and `/metrics`
/// says which version runs (`postcache_build_info`).
#[tokio::test]
async fn openapi_prints_the_served_document_metrics_name_the_version_and_probe_checks_health() {
    let printed = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    // The committed copy (for readers and client generators) is this output;
    // `POSTCACHE_BLESS=1` rewrites it.
    let committed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    if std::env::var_os("POSTCACHE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&committed, &printed.stdout).unwrap();
    }
    assert!(
        std::fs::read(&committed).unwrap_or_default() == printed.stdout,
        "docs/openapi.json is stale: `cargo run -p postcache -- openapi > docs/openapi.json`"
    );
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    let pods = crate::tiers::Pods::start(1, &[]);
    let served = pods.json(0, "/openapi.json").await;
    assert_eq!(printed, served);
    assert!(
        printed["components"]["securitySchemes"]["bearer"].is_object(),
        "the bearer scheme is documented"
    );
    let version = format!(
        "postcache_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(pods.metric(0, &version).await, Some(1.0));

    // `probe`, the image's health check: 0 on a 2xx answer, 1 and the status otherwise.
    let probe = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_postcache"))
            .args(["probe", &format!("{}{path}", pods.base(0))])
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    assert!(probe("/readyz").status.success());
    let missing = probe("/no-such-page");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}
