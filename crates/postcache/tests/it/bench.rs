//! `postcache bench` against a running `postcache serve`: it loads, measures and reports.

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postcache_testkit::free_port;

use crate::{serve, wait_exit, wait_healthy};

#[test]
fn bench_loads_a_running_service_and_reports_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("POSTCACHE_LISTEN", listen.as_str()),
        ("POSTCACHE_API_TOKENS", "bench-token"),
        ("POSTCACHE_RATE_LIMIT_PER_SECOND", "0"), // one client, far above the per-IP default
    ];
    let mut child = serve(dir.path(), &env);
    let url = format!("http://{listen}");
    wait_healthy(&url, &mut child);

    let out = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .args([
            "bench",
            "--url",
            &url,
            "--token",
            "bench-token",
            "--posts",
            "50",
            "--concurrency",
            "4",
        ])
        .args(["--seconds", "2", "--read-ratio", "0.9", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for op in ["read", "write"] {
        assert!(report[op]["count"].as_u64().unwrap() > 0, "{op}: {report}");
        assert_eq!(report[op]["errors"], 0, "{op}: {report}");
        assert!(report[op]["p50_us"].as_u64().unwrap() <= report[op]["p99_us"].as_u64().unwrap());
    }
    assert!(
        report["read_tiers"]["l1"].as_u64().unwrap() > 0,
        "hot posts come from L1: {report}"
    );

    // Open loop at a fixed rate, the identical load against a second server, a plot.
    let other_dir = tempfile::tempdir().unwrap();
    let other_listen = format!("127.0.0.1:{}", free_port());
    let mut other = serve(
        other_dir.path(),
        &[
            ("POSTCACHE_LISTEN", other_listen.as_str()),
            ("POSTCACHE_INSECURE_NO_AUTH", "true"),
            ("POSTCACHE_RATE_LIMIT_PER_SECOND", "0"),
        ],
    );
    let other_url = format!("http://{other_listen}");
    wait_healthy(&other_url, &mut other);
    let mirror = dir.path().join("mirror");
    let plot = dir.path().join("run.svg");
    let pid = child.id().to_string();
    let out = bench(&[
        "--url",
        &url,
        "--token",
        "bench-token",
        "--posts",
        "20",
        "--rate",
        "400",
        "--seconds",
        "2",
        "--read-ratio",
        "1",
        "--keys",
        "uniform",
        "--pid",
        &pid,
        "--compare-url",
        &other_url,
        "--mirror-dir",
        mirror.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let reads = report["read"]["count"].as_u64().unwrap();
    // 400/s for 2 s: the open loop sends what is due, no more and (on an idle server) no less.
    assert!((700..=800).contains(&reads), "{report}");
    assert_eq!(report["open_loop_rate"], 400.0, "{report}");
    assert!(
        report["server"]["cpu_seconds"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["timeline"]["read"].as_array().unwrap().len() >= 2,
        "{report}"
    );
    // The other server has none of these posts: every read there is a 404, not a success.
    assert_eq!(report["compare"]["read"]["count"], 0, "{report}");
    assert!(
        report["compare"]["read"]["errors"].as_u64().unwrap() > 700,
        "{report}"
    );
    assert_eq!(
        report["compare"]["ratio"]["read_per_second"], 0.0,
        "{report}"
    );
    // The mirror holds each post's bytes as served, for a static server to serve the same.
    let mirrored: Vec<_> = std::fs::read_dir(mirror.join("v1/posts"))
        .unwrap()
        .collect();
    assert_eq!(mirrored.len(), 20);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("read p99"),
        "{svg:.200}"
    );

    // Fan-out over both transports: every published post reaches every subscriber.
    for mode in ["ws", "sse"] {
        let out = bench(&[
            "--url",
            &url,
            "--token",
            "bench-token",
            "--mode",
            mode,
            "--subscribers",
            "20",
            "--events-per-second",
            "20",
            "--seconds",
            "1",
            "--pid",
            &pid,
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(report["connected"], 20, "{mode}: {report}");
        assert!(
            report["published"].as_u64().unwrap() >= 15,
            "{mode}: {report}"
        );
        assert_eq!(
            report["deliveries"], report["expected_deliveries"],
            "{mode}: {report}"
        );
        assert!(
            report["latency"]["p50_us"].as_u64().unwrap() > 0,
            "{mode}: {report}"
        );
        let server = &report["server"];
        assert!(
            server["deliveries_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{mode}: {report}"
        );
        for rss in [
            "rss_per_connection_bytes",
            "rss_marginal_per_connection_bytes",
        ] {
            assert!(server[rss].as_f64().is_some(), "{mode}: {report}");
        }
    }
    kill(Pid::from_raw(other.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut other).success());

    // Options that contradict each other are refused before anything is sent.
    let refused = bench_fails(&["--url", &url, "--read-ratio", "0.8", "--feed-ratio", "0.5"]);
    assert!(refused.contains("add up to at most 1"), "{refused}");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(wait_exit(&mut child).success());

    // With nothing listening, seeding fails, and bench says so.
    let refused = bench_fails(&[
        "--url",
        "http://127.0.0.1:1",
        "--posts",
        "1",
        "--seconds",
        "0.1",
    ]);
    assert!(refused.contains("seeding posts failed"), "{refused}");
}

/// Runs `postcache bench` with `args`, which must fail; its stderr.
fn bench_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `postcache bench` with `args`; its stdout, once it succeeded.
fn bench(args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_postcache"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
