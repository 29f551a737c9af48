//! Standalone cluster-enabled Redis nodes that belong to no cluster yet: the raw material for
//! tests of cluster formation and resharding (unlike [`RedisCluster`](crate::RedisCluster), which
//! arrives formed).
//!
//! Every node may require a password (`requirepass` and `masterauth`); the helpers pass it to
//! redis-cli through `REDISCLI_AUTH`, as the operator's scripts do.

use std::process::Command;

use tempfile::TempDir;

use crate::process::Process;
use crate::redis::server_spec;
use crate::{free_port, tool};

/// `n` cluster-enabled `redis-server`s on loopback, each alone until something joins them.
pub struct RedisNodes {
    nodes: Vec<Process>,
    ports: Vec<u16>,
    password: Option<String>,
    _dir: TempDir,
}

impl RedisNodes {
    /// Starts `n` nodes, optionally requiring `password` from clients and from each other.
    ///
    /// # Panics
    /// When a node does not answer PING in time; the message carries its log tail.
    pub fn start(n: usize, password: Option<&str>) -> RedisNodes {
        let dir = tempfile::Builder::new()
            .prefix("postcache-redis-nodes-")
            .tempdir()
            .expect("temp dir");
        let password = password.map(str::to_owned);
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &port)| {
                let node_dir = dir.path().join(format!("node-{i}"));
                std::fs::create_dir(&node_dir).expect("node dir");
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ];
                if let Some(password) = password.as_deref() {
                    args.extend(["--requirepass", password, "--masterauth", password]);
                }
                let mut spec = server_spec(&format!("redis-node-{i}"), &node_dir, port, &args);
                let auth = password.clone();
                spec.ready =
                    Box::new(
                        move || match cli(port, auth.as_deref(), &["ping"])?.as_str() {
                            "PONG" => Ok(()),
                            other => Err(other.to_owned()),
                        },
                    );
                Process::start(spec)
            })
            .collect();
        RedisNodes {
            nodes,
            ports,
            password,
            _dir: dir,
        }
    }

    /// `127.0.0.1:{port}` of every node, in start order.
    pub fn addrs(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// Node `i`'s process (fault handles).
    ///
    /// # Panics
    /// When there is no node `i`.
    pub fn node(&self, i: usize) -> &Process {
        &self.nodes[i]
    }

    /// Runs `redis-cli` against node `i` with the nodes' password (add `-c` to `args` to follow
    /// MOVED redirections, as a cluster client does).
    ///
    /// # Errors
    /// redis-cli's output when it fails or cannot connect.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        cli(self.ports[i], self.password.as_deref(), args)
    }
}

fn cli(port: u16, password: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(tool("redis-cli"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let out = command.args(args).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !text.starts_with("Could not connect") {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}
