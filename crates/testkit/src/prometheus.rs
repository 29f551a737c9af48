//! Prometheus with a given scrape configuration and rule files, scraping every second.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{Process, ProcessSpec};
use crate::{free_port, http_get, tool};

/// One scrape job: Prometheus fetches `http://{addr}{path}` every second.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    /// The `job` label.
    pub job: String,
    /// Where the target listens.
    pub addr: SocketAddr,
    /// The metrics path, usually `/metrics`.
    pub path: String,
    /// Labels every series of the target gets (e.g. the `namespace` a ServiceMonitor adds).
    pub labels: Vec<(String, String)>,
}

/// A Prometheus server on loopback. Not shared: each test brings its own targets and rules.
pub struct Prometheus {
    process: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (those with one job name under one scrape config) and
    /// evaluating `rule_files` every second.
    ///
    /// # Panics
    /// When a rule file cannot be copied or the server is not ready in time (its log tail says why:
    /// invalid rules keep it from starting).
    pub fn start(targets: &[ScrapeTarget], rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("postcache-prometheus-")
            .tempdir()
            .expect("temp dir");
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        if !rule_files.is_empty() {
            config.push_str("rule_files:\n");
            for (i, file) in rule_files.iter().enumerate() {
                let copy = dir.path().join(format!("rules-{i}.yml"));
                std::fs::copy(file, &copy)
                    .unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
                config.push_str(&format!("  - {}\n", copy.display()));
            }
        }
        config.push_str("scrape_configs:\n");
        // One scrape config per job name (Prometheus wants them unique); each target is a static
        // config of its own, with its own labels.
        let mut jobs: Vec<&str> = targets.iter().map(|t| t.job.as_str()).collect();
        jobs.dedup();
        for job in jobs {
            let mut members = targets.iter().filter(|t| t.job == job).peekable();
            let path = members.peek().map_or("/metrics", |t| t.path.as_str());
            config.push_str(&format!(
                "  - job_name: {job:?}\n    metrics_path: {path:?}\n    static_configs:\n"
            ));
            for target in members {
                config.push_str(&format!(
                    "      - targets: [{:?}]\n",
                    target.addr.to_string()
                ));
                if !target.labels.is_empty() {
                    config.push_str("        labels:\n");
                    for (name, value) in &target.labels {
                        config.push_str(&format!("          {name}: {value:?}\n"));
                    }
                }
            }
        }
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");

        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let spec = ProcessSpec {
            name: "prometheus".into(),
            program: tool("prometheus"),
            args: vec![
                format!("--config.file={}", config_file.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={addr}"),
            ],
            env: vec![],
            user: None,
            log: dir.path().join("prometheus.log"),
            ready: Box::new(move || match http_get(addr, "/-/ready")? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status}: {body}")),
            }),
            ready_timeout: Duration::from_secs(30),
            stop_signal: Signal::SIGTERM,
        };
        let process = Process::start(spec);
        Prometheus {
            process,
            addr,
            _dir: dir,
        }
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:23456`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server process (fault handles).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The active alerts (pending or firing) of each loaded rule file: (file, alert name, the
    /// alert's labels), from `/api/v1/rules`. Files are this server's copies, `rules-<i>.yml` for
    /// the i-th file given to [`Prometheus::start`].
    ///
    /// # Errors
    /// Transport errors and a reply that is not a success.
    pub async fn active_alerts(
        &self,
    ) -> Result<Vec<(String, String, serde_json::Map<String, serde_json::Value>)>, String> {
        let body = self.api("rules", &[("type", "alert")]).await?;
        let mut out = Vec::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            let file = group["file"].as_str().unwrap_or_default();
            let file = file.rsplit('/').next().unwrap_or(file).to_owned();
            for rule in group["rules"].as_array().into_iter().flatten() {
                for alert in rule["alerts"].as_array().into_iter().flatten() {
                    let labels = alert["labels"].as_object().cloned().unwrap_or_default();
                    let name = rule["name"].as_str().unwrap_or_default().to_owned();
                    out.push((file.clone(), name, labels));
                }
            }
        }
        Ok(out)
    }

    /// `GET /api/v1/<path>?<params>`: the reply, when its status is `success`.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url()))
            .query(params)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{path} {params:?} failed: {body}"));
        }
        Ok(body)
    }

    /// Runs an instant PromQL query; the first sample's value, `Ok(None)` when the result is
    /// empty.
    ///
    /// # Errors
    /// Transport errors, and queries Prometheus rejects (the message says why).
    pub async fn query(&self, expr: &str) -> Result<Option<f64>, String> {
        let body = self.api("query", &[("query", expr)]).await?;
        let first = &body["data"]["result"][0]["value"][1];
        Ok(first.as_str().map(|v| v.parse::<f64>().unwrap_or(f64::NAN)))
    }
}
