//! Redis: a standalone server, and a Redis Cluster of 3 shards × 1 replica.
//!
//! Neither persists anything (`save ""`, no AOF): a killed Redis comes back empty, as a lost
//! cache node does. Tests isolate themselves by key prefix ([`unique_name`](crate::unique_name)).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{Process, ProcessSpec};
use crate::shared::SharedSlot;
use crate::{free_port, tool, wait_until};

/// A standalone `redis-server` on loopback.
pub struct Redis {
    process: Process,
    port: u16,
    tls_port: Option<u16>,
    _dir: TempDir,
}

impl Redis {
    /// Starts a fresh server.
    ///
    /// # Panics
    /// When it does not answer PING in time; the message carries its log tail.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("postcache-redis-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let process = Process::start(server_spec("redis", dir.path(), port, &[]));
        Redis {
            process,
            port,
            tls_port: None,
            _dir: dir,
        }
    }

    /// A fresh server that also listens with TLS (a certificate of the test CA, clients not
    /// asked for one): [`Redis::tls_url`], [`Redis::ca_file`].
    pub fn start_tls() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("postcache-redis-")
            .tempdir()
            .expect("temp dir");
        let ca = crate::TestCa::create(dir.path());
        let (port, tls_port) = (free_port(), free_port());
        let (cert, key, ca_file) = (
            ca.cert().display().to_string(),
            ca.key().display().to_string(),
            ca.ca().display().to_string(),
        );
        let tls = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned);
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let process = Process::start(server_spec("redis", dir.path(), port, &tls));
        Redis {
            process,
            port,
            tls_port: Some(tls_port),
            _dir: dir,
        }
    }

    /// `rediss://127.0.0.1:{tls port}/` (with [`Redis::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/",
            self.tls_port.expect("started with TLS")
        )
    }

    /// The CA of the TLS certificate (with [`Redis::start_tls`]).
    pub fn ca_file(&self) -> std::path::PathBuf {
        self._dir.path().join("ca.pem")
    }

    /// A server shared by the tests of this binary.
    pub fn shared() -> Arc<Redis> {
        static SLOT: SharedSlot<Redis> = SharedSlot::new();
        SLOT.get_or_start(Redis::start)
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process (fault handles).
    pub fn process(&self) -> &Process {
        &self.process
    }
}

/// A Redis Cluster: 3 masters and 3 replicas, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<Process>,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Number of shards (masters).
    pub const SHARDS: usize = 3;

    /// Starts six nodes, joins them with `redis-cli --cluster create` and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots assigned.
    ///
    /// # Panics
    /// When a step fails or the cluster does not converge in time.
    pub fn start() -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("postcache-redis-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports: Vec<u16> = (0..Self::SHARDS * 2).map(|_| free_port()).collect();
        let nodes: Vec<Process> = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let node_dir = dir.path().join(format!("node-{i}"));
                std::fs::create_dir(&node_dir).expect("node dir");
                let cluster_args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ];
                Process::start(server_spec(
                    &format!("redis-node-{i}"),
                    &node_dir,
                    port,
                    &cluster_args,
                ))
            })
            .collect();

        let mut create = Command::new(tool("redis-cli"));
        create.arg("--cluster").arg("create");
        create.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for &port in &ports {
            wait_until(
                &format!("cluster state ok on node :{port}"),
                Duration::from_secs(60),
                || {
                    let info = cli(port, &["cluster", "info"])?;
                    let ok = info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_assigned:16384")
                        && info.contains(&format!("cluster_known_nodes:{}", ports.len()));
                    if ok { Ok(()) } else { Err(info) }
                },
            );
        }
        RedisCluster {
            nodes,
            ports,
            _dir: dir,
        }
    }

    /// A cluster shared by the tests of this binary.
    pub fn shared() -> Arc<RedisCluster> {
        static SLOT: SharedSlot<RedisCluster> = SharedSlot::new();
        SLOT.get_or_start(RedisCluster::start)
    }

    /// `redis://` URLs of every node (any subset works as seeds).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// Node `i`'s process (fault handles).
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn node(&self, i: usize) -> &Process {
        &self.nodes[i]
    }

    /// Runs `redis-cli` against node `i`.
    ///
    /// # Errors
    /// redis-cli's error output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        cli(self.ports[i], args)
    }
}

pub(crate) fn server_spec(name: &str, dir: &Path, port: u16, extra: &[&str]) -> ProcessSpec {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.display().to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    ProcessSpec {
        name: name.to_owned(),
        program: tool("redis-server"),
        args,
        env: vec![],
        user: None,
        log: dir.join(format!("{name}.log")),
        ready: Box::new(move || match cli(port, &["ping"])?.as_str() {
            "PONG" => Ok(()),
            other => Err(other.to_owned()),
        }),
        ready_timeout: Duration::from_secs(20),
        stop_signal: Signal::SIGTERM,
    }
}

fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("redis-cli"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !text.starts_with("Could not connect") {
        Ok(text)
    } else {
        Err(text)
    }
}
