//! A Kubernetes control plane built from the upstream Go modules (see `scripts/install-deps`):
//! etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok with one fake node.
//!
//! ```text
//! kubectl / kube::Client ─TLS─▶ kube-apiserver ─▶ etcd
//!        controller-manager, scheduler, kwok ─┘   (Deployments → Pods → bound → Running, Ready)
//! ```
//! Tests isolate themselves in a namespace ([`ControlPlane::create_namespace`]).

mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{Process, ProcessSpec, Readiness, last_lines};
use crate::shared::SharedSlot;
use crate::{free_port, http_get, tool, unique_name, wait_until};
use pki::Pki;

/// The fake node every control plane starts with.
pub const NODE_NAME: &str = "kwok-node-0";

/// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on loopback.
pub struct ControlPlane {
    // Field order is drop order: clients of the apiserver stop first, etcd last.
    kwok: Process,
    scheduler: Process,
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    kubeconfig: PathBuf,
    ca_cert: PathBuf,
    audit_log: PathBuf,
    apiserver_port: u16,
    _dir: TempDir,
}

impl ControlPlane {
    /// Starts every component, registers one kwok node, installs kwok's default StorageClass, and
    /// waits until the node is Ready and the `default` ServiceAccount exists (the controller
    /// manager works).
    ///
    /// # Panics
    /// When a component does not come up; the message carries its log tail.
    pub fn start() -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("postcache-k8s-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let pki = Pki::generate(d).unwrap_or_else(|e| panic!("control-plane certificates: {e}"));
        let (etcd_port, peer_port, apiserver_port) = (free_port(), free_port(), free_port());
        let kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &pki, apiserver_port);
        let audit_policy = d.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY).expect("write the audit policy");
        let audit_log = d.join("audit.log");

        let etcd_addr = SocketAddr::from(([127, 0, 0, 1], etcd_port));
        let etcd = Process::start(spec(
            d,
            "etcd",
            etcd_args(d, etcd_port, peer_port),
            http_ready(etcd_addr, "/health"),
        ));
        let apiserver = Process::start(ProcessSpec {
            ready_timeout: Duration::from_secs(120),
            ..spec(
                d,
                "kube-apiserver",
                apiserver_args(&pki, etcd_port, apiserver_port, &audit_policy, &audit_log),
                kubectl_ready(&kubeconfig),
            )
        });
        let cm_port = free_port();
        let controller_manager = Process::start(spec(
            d,
            "kube-controller-manager",
            args(&[
                &format!("--kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={cm_port}"),
                "--leader-elect=false",
                &format!("--root-ca-file={}", pki.ca_cert.display()),
                &format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                "--use-service-account-credentials=false",
                // kwok renews node leases rarely; never evict its pods for a late heartbeat.
                "--node-monitor-grace-period=3m20s",
            ]),
            https_ready(cm_port),
        ));
        let scheduler_port = free_port();
        let scheduler = Process::start(spec(
            d,
            "kube-scheduler",
            args(&[
                &format!("--kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={scheduler_port}"),
                "--leader-elect=false",
            ]),
            https_ready(scheduler_port),
        ));
        let kwok_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let kwok = Process::start(spec(
            d,
            "kwok",
            args(&[
                &format!("--kubeconfig={}", kubeconfig.display()),
                &format!("--config={}", tool("stages.yaml").display()),
                // Only the fake node: a real one (`Node`) runs its own kubelet.
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                &format!("--server-address={kwok_addr}"),
                "--node-lease-duration-seconds=200",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.1.0.1",
            ]),
            http_ready(kwok_addr, "/healthz"),
        ));
        let plane = ControlPlane {
            kwok,
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            kubeconfig,
            ca_cert: pki.ca_cert.clone(),
            audit_log,
            apiserver_port,
            _dir: dir,
        };
        plane.register_node();
        plane
    }

    /// A control plane shared by the tests of this binary.
    pub fn shared() -> Arc<ControlPlane> {
        static SLOT: SharedSlot<ControlPlane> = SharedSlot::new();
        SLOT.get_or_start(ControlPlane::start)
    }

    /// A client for the admin user (`system:masters`). Call from within a Tokio runtime.
    ///
    /// # Panics
    /// When the generated kubeconfig cannot be read (a bug here, not in the test).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig is valid");
        kube::Client::try_from(config).expect("client from kubeconfig")
    }

    /// The admin kubeconfig file (for `kubectl`, `helm`, or a `KUBECONFIG` of a process under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster CA's certificate (it signed the apiserver's serving and client certificates).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The apiserver's audit log (JSON lines): every request a ServiceAccount made.
    pub fn audit_log(&self) -> &Path {
        &self.audit_log
    }

    /// The apiserver's address (on loopback).
    pub fn apiserver_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.apiserver_port).into()
    }

    /// `https://127.0.0.1:{port}`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// Runs `kubectl` with the admin kubeconfig.
    ///
    /// # Errors
    /// kubectl's error output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        kubectl(&self.kubeconfig, args)
    }

    /// What a failed wait for Pods should show beside them: each node's taints and the conditions
    /// that are true (a `DiskPressure` taint leaves every new Pod Pending), and the warning events
    /// of `namespace` (why a Pod was not scheduled, or was evicted).
    pub fn nodes_and_warnings(&self, namespace: &str) -> String {
        let nodes = self
            .kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\" taints: \"}{.spec.taints[*].key}\
                 {\" true: \"}{.status.conditions[?(@.status==\"True\")].type}{\"\\n\"}{end}",
            ])
            .unwrap_or_else(|e| e);
        let warnings = self
            .kubectl(&[
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector",
                "type=Warning",
                "--sort-by=.lastTimestamp",
            ])
            .unwrap_or_else(|e| e);
        format!(
            "--- nodes ---\n{nodes}\n--- warning events ---\n{}",
            last_lines(&warnings, 15)
        )
    }

    /// Creates a fresh namespace for one test and returns its name.
    ///
    /// # Panics
    /// When kubectl fails.
    pub fn create_namespace(&self) -> String {
        let name = unique_name("t");
        self.kubectl(&["create", "namespace", &name])
            .unwrap_or_else(|e| panic!("create namespace: {e}"));
        name
    }

    /// The processes, for fault injection.
    pub fn etcd(&self) -> &Process {
        &self.etcd
    }

    /// See [`ControlPlane::etcd`].
    pub fn apiserver(&self) -> &Process {
        &self.apiserver
    }

    /// See [`ControlPlane::etcd`].
    pub fn controller_manager(&self) -> &Process {
        &self.controller_manager
    }

    /// See [`ControlPlane::etcd`].
    pub fn scheduler(&self) -> &Process {
        &self.scheduler
    }

    /// See [`ControlPlane::etcd`].
    pub fn kwok(&self) -> &Process {
        &self.kwok
    }

    fn register_node(&self) {
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{NODE_NAME}",
              "annotations":{{"node.alpha.kubernetes.io/ttl":"0","kwok.x-k8s.io/node":"fake"}},
              "labels":{{"kubernetes.io/hostname":"{NODE_NAME}","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","type":"kwok"}}}},
              "status":{{"allocatable":{{"cpu":"32","memory":"256Gi","pods":"110"}},"capacity":{{"cpu":"32","memory":"256Gi","pods":"110"}}}}}}"#
        );
        let file = self.kubeconfig.with_file_name("node.json");
        std::fs::write(&file, node).expect("write node.json");
        let storage_class = tool("storage-class.yaml");
        for manifest in [file.as_path(), storage_class.as_path()] {
            wait_until("kubectl apply", Duration::from_secs(30), || {
                self.kubectl(&["apply", "-f", &manifest.display().to_string()])
            });
        }
        wait_until("the kwok node to be Ready", Duration::from_secs(60), || {
            let status = self.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ])?;
            if status == "True" {
                Ok(())
            } else {
                Err(format!("Ready={status:?}"))
            }
        });
        wait_until(
            "the default ServiceAccount (controller-manager)",
            Duration::from_secs(60),
            || {
                self.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "default",
                    "-o",
                    "name",
                ])
            },
        );
    }
}

fn spec(dir: &Path, name: &str, args: Vec<String>, ready: Readiness) -> ProcessSpec {
    ProcessSpec::of_tool(name, args, dir.join(format!("{name}.log")), ready)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn etcd_args(dir: &Path, port: u16, peer: u16) -> Vec<String> {
    args(&[
        "--name=t",
        &format!("--data-dir={}", dir.join("etcd").display()),
        "--unsafe-no-fsync=true",
        &format!("--listen-client-urls=http://127.0.0.1:{port}"),
        &format!("--advertise-client-urls=http://127.0.0.1:{port}"),
        &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        &format!("--initial-cluster=t=http://127.0.0.1:{peer}"),
        "--listen-metrics-urls=",
    ])
}

/// What the apiserver audits: every request of a ServiceAccount (an operator in the cluster,
/// whose use of its RBAC a test compares with what it was granted), at `Metadata` level.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  userGroups: [\"system:serviceaccounts\"]
- level: None
";

fn apiserver_args(
    pki: &Pki,
    etcd_port: u16,
    port: u16,
    audit_policy: &Path,
    audit_log: &Path,
) -> Vec<String> {
    args(&[
        &format!("--audit-policy-file={}", audit_policy.display()),
        &format!("--audit-log-path={}", audit_log.display()),
        "--audit-log-mode=blocking",
        &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        &format!("--secure-port={port}"),
        &format!("--tls-cert-file={}", pki.serving_cert.display()),
        &format!("--tls-private-key-file={}", pki.serving_key.display()),
        &format!("--client-ca-file={}", pki.ca_cert.display()),
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        &format!("--service-account-key-file={}", pki.sa_pub.display()),
        &format!(
            "--service-account-signing-key-file={}",
            pki.sa_key.display()
        ),
        "--service-cluster-ip-range=10.0.0.0/24",
        "--endpoint-reconciler-type=none",
        // `kubectl logs/exec` reach a real node's kubelet by its address: its name resolves
        // nowhere on this machine.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        // ... and present the admin certificate there (a real node's kubelet trusts the CA).
        &format!("--kubelet-client-certificate={}", pki.admin_cert.display()),
        &format!("--kubelet-client-key={}", pki.admin_key.display()),
        // The aggregation layer, for a real node's metrics-server (the metrics API the
        // HorizontalPodAutoscaler reads): the apiserver proxies with the front-proxy client
        // certificate, the only one whose forwarded identity is believed.
        &format!("--requestheader-client-ca-file={}", pki.ca_cert.display()),
        &format!("--requestheader-allowed-names={}", pki::FRONT_PROXY_CN),
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        &format!(
            "--proxy-client-cert-file={}",
            pki.front_proxy_cert.display()
        ),
        &format!("--proxy-client-key-file={}", pki.front_proxy_key.display()),
        "--enable-aggregator-routing=true",
    ])
}

fn write_kubeconfig(path: &Path, pki: &Pki, port: u16) {
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: t, cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: \"{}\"}}}}]\n\
         users: [{{name: admin, user: {{client-certificate: \"{}\", client-key: \"{}\"}}}}]\n\
         contexts: [{{name: t, context: {{cluster: t, user: admin}}}}]\ncurrent-context: t\n",
        pki.ca_cert.display(),
        pki.admin_cert.display(),
        pki.admin_key.display()
    );
    std::fs::write(path, config).expect("write kubeconfig");
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn http_ready(addr: SocketAddr, path: &'static str) -> Readiness {
    Box::new(move || match http_get(addr, path)? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{path}: {status} {body}")),
    })
}

fn kubectl_ready(kubeconfig: &Path) -> Readiness {
    let kubeconfig = kubeconfig.to_owned();
    Box::new(
        move || match kubectl(&kubeconfig, &["get", "--raw=/readyz"])?.as_str() {
            "ok" => Ok(()),
            other => Err(other.to_owned()),
        },
    )
}

/// The controller manager and scheduler serve `/healthz` on their secure port with a self-signed
/// certificate; curl checks it (certificate not verified: it is only a liveness probe).
fn https_ready(port: u16) -> Readiness {
    Box::new(move || {
        let out = Command::new("curl")
            .args([
                "-ksf",
                "--max-time",
                "2",
                &format!("https://127.0.0.1:{port}/healthz"),
            ])
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("healthz on :{port} not ok"))
        }
    })
}
