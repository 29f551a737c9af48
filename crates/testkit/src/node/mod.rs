//! A real worker node beside the [`ControlPlane`]: containerd (runc), kubelet, kube-proxy and
//! CoreDNS on this machine, so that Pods run real containers — unlike the kwok node, whose Pods
//! only look Running.
//!
//! ```text
//! kube-apiserver ◀── kubelet ─CRI─▶ containerd ─▶ runc ─▶ container
//!   ▲    ▲               │ CNI bridge cni0 (10.245.0.0/24, no masquerade, no route out)
//!   │    └── kube-proxy (iptables: ClusterIP → Pod)     CoreDNS on the node's address (kube-dns)
//!   ├── relay on the bridge's 10.245.0.1 ◀── Pods' `kubernetes` Service (in-cluster clients)
//!   └─aggregation─▶ metrics-server on 10.245.0.1 ─▶ kubelet (metrics.k8s.io: `kubectl top`, HPA)
//! images: crane registry on 127.0.0.1 ─http─▶ containerd (sandbox = a static pause built here)
//! ```
//!
//! The node is host-wide (bridge, cgroups, iptables, mounts), so one exists per machine at a time:
//! [`Node::start`] waits for a file lock, first removes what a crashed run may have left, and
//! dropping the node (also while a test panics) stops everything and removes it again. It is
//! registered tainted ([`TAINT`]): only Pods that tolerate it and select [`Node::NAME`] land here,
//! the other tests keep their kwok node.

mod config;
mod host;
mod images;
mod relay;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::process::{Process, ProcessSpec, Readiness};
use crate::{free_port, http_get, tool, wait_until};
use config::{KubeletPorts, Layout};
use host::{HostLock, Sysctls};

/// The taint (`<key>=true:NoSchedule`) and label (`<key>=true`) of the real node.
const TAINT: &str = "postcache.dev/real-node";

/// containerd, kubelet, kube-proxy and CoreDNS running one real node; torn down on drop.
pub struct Node {
    /// In start order; stopped in reverse.
    processes: Vec<Process>,
    plane: Arc<ControlPlane>,
    layout: Layout,
    registry: String,
    node_ip: Ipv4Addr,
    sysctls: Sysctls,
    relay: Option<relay::Relay>,
    _lock: HostLock,
}

impl Node {
    /// The node's name (and `kubernetes.io/hostname` label).
    pub const NAME: &'static str = "postcache-node";

    /// The node's taint key (`<key>=true:NoSchedule`), also a label `<key>=true`: a Pod meant for
    /// this node tolerates it and selects [`Node::NAME`].
    pub const TAINT: &'static str = TAINT;

    /// Starts the node against `plane` and waits until it is Ready, kube-proxy has synced and
    /// CoreDNS serves. Blocks while another node runs on this machine.
    ///
    /// # Panics
    /// When a part does not come up (with its log tail), or the machine lacks a default route.
    pub fn start(plane: Arc<ControlPlane>) -> Node {
        let tmp = std::env::temp_dir();
        let lock = HostLock::acquire(&tmp.join("postcache-node.lock"));
        let layout = Layout {
            base: tmp.join("postcache-node"),
        };
        host::clean(&layout.base);
        let _ = std::fs::remove_dir_all(&layout.base);
        for dir in ["containerd", "cni/net.d", "registry", "kubelet", "pod-logs"] {
            std::fs::create_dir_all(layout.base.join(dir)).expect("create node dirs");
        }
        let sysctls = Sysctls::save(tmp.join("postcache-node.sysctl"));
        let mut node = Node {
            processes: Vec::new(),
            plane,
            node_ip: node_ip(),
            registry: String::new(),
            layout,
            sysctls,
            relay: None,
            _lock: lock,
        };
        host::create_bridge(&format!("{}/24", config::GATEWAY));
        node.relay = Some(relay::Relay::start(
            (config::GATEWAY, 0).into(),
            node.plane.apiserver_addr(),
        ));
        node.start_registry();
        let sandbox = node.push_pause_image();
        node.start_containerd(&sandbox);
        node.start_kubelet();
        node.start_kube_proxy();
        node.start_coredns();
        node.start_metrics_server();
        node
    }

    /// `127.0.0.1:<port>`: a registry the node pulls from over plain HTTP (push with
    /// `crane … --insecure`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Pushes a Redis image assembled from this machine's Debian packages (`redis-server`,
    /// `redis-cli`, `bash`, busybox; no entrypoint) to the node's registry; returns its reference.
    pub fn push_redis_image(&self) -> String {
        images::push_redis(&self.registry, &self.layout.base.join("images"))
    }

    /// Pushes a PostgreSQL image assembled from this machine's Debian packages (the server and
    /// its client programs on `PATH`, `bash`, busybox; no entrypoint) to the node's registry;
    /// returns its reference.
    pub fn push_postgres_image(&self) -> String {
        images::push_postgres(&self.registry, &self.layout.base.join("images"))
    }

    /// The StorageClass of [`Node::provide_volumes`]' volumes.
    pub const STORAGE_CLASS: &'static str = "postcache-node-local";

    /// Makes `count` `local` PersistentVolumes of `size` on this node (directories under its base
    /// directory) in the class [`Node::STORAGE_CLASS`] (no provisioner, bound when a Pod is
    /// scheduled), for claims that name the class. They go with the node.
    pub fn provide_volumes(&self, count: usize, size: &str) {
        let class = serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": Node::STORAGE_CLASS, "labels": {TAINT: "true"}},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        });
        let mut items = vec![class];
        for _ in 0..count {
            let name = crate::unique_name("node-pv");
            let dir = self.layout.base.join("volumes").join(&name);
            std::fs::create_dir_all(&dir).expect("create a volume directory");
            items.push(serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {TAINT: "true"}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": Node::STORAGE_CLASS,
                    "local": {"path": dir.display().to_string()},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [Node::NAME]}
                    ]}]}},
                }
            }));
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let file = self
            .layout
            .base
            .join(format!("{}.json", crate::unique_name("volumes")));
        write(&file, &list.to_string());
        self.plane
            .kubectl(&["apply", "-f", &file.display().to_string()])
            .unwrap_or_else(|e| panic!("create the node's volumes: {e}"));
    }

    /// The node's InternalIP (where CoreDNS listens).
    pub fn ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// The directory kubelet keeps Pod logs in (`<namespace>_<pod>_<uid>/<container>/0.log`).
    pub fn pod_logs(&self) -> PathBuf {
        self.layout.base.join("pod-logs")
    }

    /// The last lines of a part's log (`containerd`, `kubelet`, `kube-proxy`, `coredns`).
    pub fn log_tail(&self, part: &str, lines: usize) -> String {
        self.processes
            .iter()
            .find(|p| p.name() == part)
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    fn spec(&self, name: &str, args: Vec<String>, ready: Readiness) -> ProcessSpec {
        ProcessSpec::of_tool(name, args, self.layout.log(name), ready)
    }

    fn start_registry(&mut self) {
        let port = free_port();
        let disk = self.layout.base.join("registry");
        let args = strings(&[
            "registry",
            "serve",
            &format!("--address=127.0.0.1:{port}"),
            &format!("--disk={}", disk.display()),
        ]);
        let ready = http_ready(([127, 0, 0, 1], port).into(), "/v2/");
        let spec = ProcessSpec {
            name: "registry".into(),
            ..self.spec("crane", args, ready)
        };
        self.processes.push(Process::start(spec));
        self.registry = format!("127.0.0.1:{port}");
    }

    /// A static `pause` (musl) on an empty base: the image every Pod sandbox runs.
    fn push_pause_image(&self) -> String {
        let dir = self.layout.base.join("pause");
        std::fs::create_dir_all(&dir).expect("pause dir");
        std::fs::write(dir.join("pause.c"), PAUSE_C).expect("write pause.c");
        run(
            Path::new("musl-gcc"),
            &["-static", "-Os", "-o", "pause", "pause.c"],
            &dir,
        );
        run(
            Path::new("tar"),
            &[
                "--owner=0",
                "--group=0",
                "--mode=0755",
                "-cf",
                "pause.tar",
                "pause",
            ],
            &dir,
        );
        let image = format!("{}/pause:1", self.registry);
        let crane = tool("crane");
        let append = [
            "append",
            "--insecure",
            "--oci-empty-base",
            "-f",
            "pause.tar",
            "-t",
            &image,
        ];
        run(&crane, &append, &dir);
        let mutate = [
            "mutate",
            "--insecure",
            &image,
            "--entrypoint=/pause",
            "--set-platform=linux/amd64",
            "-t",
            &image,
        ];
        run(&crane, &mutate, &dir);
        image
    }

    fn start_containerd(&mut self, sandbox: &str) {
        let layout = &self.layout;
        let hosts = layout.registry_hosts().join(&self.registry);
        std::fs::create_dir_all(&hosts).expect("registry hosts dir");
        write(
            &hosts.join("hosts.toml"),
            &config::registry_hosts_toml(&self.registry),
        );
        write(
            &layout.containerd_config(),
            &config::containerd_toml(layout, sandbox),
        );
        write(
            &layout.cni_conf_dir().join("10-postcache.conflist"),
            &config::cni_conflist(layout, self.node_ip),
        );
        let socket = layout.containerd_socket();
        let ctr = tool("ctr");
        let ready: Readiness = Box::new(move || {
            let out = Command::new(&ctr)
                .arg(format!("--address={}", socket.display()))
                .arg("version")
                .output()
                .map_err(|e| format!("ctr: {e}"))?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        });
        let args = strings(&[&format!(
            "--config={}",
            layout.containerd_config().display()
        )]);
        let spec = self.spec("containerd", args, ready);
        self.processes.push(Process::start(spec));
    }

    fn start_kubelet(&mut self) {
        let ports = KubeletPorts {
            port: free_port(),
            healthz: free_port(),
        };
        let layout = &self.layout;
        write(
            &layout.kubelet_config(),
            &config::kubelet_yaml(layout, ports, TAINT, self.plane.ca_cert()),
        );
        let root = layout.kubelet_root();
        let args = strings(&[
            &format!("--config={}", layout.kubelet_config().display()),
            &format!("--kubeconfig={}", self.plane.kubeconfig().display()),
            &format!("--root-dir={}", root.display()),
            &format!("--cert-dir={}", root.join("pki").display()),
            &format!("--hostname-override={}", Node::NAME),
            &format!("--node-ip={}", self.node_ip),
            &format!("--node-labels={TAINT}=true"),
        ]);
        let ready = http_ready(([127, 0, 0, 1], ports.healthz).into(), "/healthz");
        let spec = self.spec("kubelet", args, ready);
        self.processes.push(Process::start(spec));
        wait_until("the real node to be Ready", Duration::from_secs(90), || {
            let ready = self.plane.kubectl(&[
                "get",
                "node",
                Node::NAME,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ])?;
            (ready == "True")
                .then_some(())
                .ok_or_else(|| format!("Ready={ready:?}\n{}", self.log_tail("kubelet", 20)))
        });
    }

    fn start_kube_proxy(&mut self) {
        let (healthz, metrics) = (free_port(), free_port());
        let file = self.layout.kube_proxy_config();
        write(
            &file,
            &config::kube_proxy_yaml(self.plane.kubeconfig(), Node::NAME, healthz, metrics),
        );
        let args = strings(&[&format!("--config={}", file.display())]);
        let ready = http_ready(([127, 0, 0, 1], healthz).into(), "/healthz");
        let spec = self.spec("kube-proxy", args, ready);
        self.processes.push(Process::start(spec));
    }

    /// CoreDNS on the node's address behind a selector-less `kube-dns` Service (kubelet's
    /// `clusterDNS`), its EndpointSlice written here.
    fn start_coredns(&mut self) {
        let (health, ready_port) = (free_port(), free_port());
        let corefile = self.layout.corefile();
        write(
            &corefile,
            &config::corefile(self.plane.kubeconfig(), self.node_ip, health, ready_port),
        );
        let manifest = self.layout.base.join("cluster-services.json");
        let relay = self
            .relay
            .as_ref()
            .map(relay::Relay::addr)
            .expect("the relay runs");
        write(&manifest, &cluster_services_manifest(self.node_ip, relay));
        wait_until("the kube-dns Service", Duration::from_secs(30), || {
            self.plane
                .kubectl(&["apply", "-f", &manifest.display().to_string()])
        });
        let args = strings(&[&format!("-conf={}", corefile.display())]);
        let ready = http_ready(([127, 0, 0, 1], ready_port).into(), "/ready");
        let spec = self.spec("coredns", args, ready);
        self.processes.push(Process::start(spec));
    }
}

impl Node {
    /// metrics-server on the bridge's gateway address, scraping the kubelet (by its status port
    /// and InternalIP, with the admin certificate), served through the aggregation layer as
    /// `metrics.k8s.io`: what `kubectl top` and the HorizontalPodAutoscaler read.
    fn start_metrics_server(&mut self) {
        let port = free_port();
        let certs = self.layout.base.join("metrics-server");
        std::fs::create_dir_all(&certs).expect("metrics-server dir");
        let kubeconfig = self.plane.kubeconfig().display().to_string();
        let args = strings(&[
            &format!("--kubeconfig={kubeconfig}"),
            &format!("--authentication-kubeconfig={kubeconfig}"),
            &format!("--authorization-kubeconfig={kubeconfig}"),
            &format!("--bind-address={}", config::GATEWAY),
            &format!("--secure-port={port}"),
            &format!("--cert-dir={}", certs.display()),
            "--kubelet-insecure-tls",
            "--kubelet-use-node-status-port",
            "--kubelet-preferred-address-types=InternalIP",
            "--metric-resolution=15s",
        ]);
        let ready: Readiness = Box::new(|| Ok(()));
        let spec = self.spec("metrics-server", args, ready);
        self.processes.push(Process::start(spec));
        let manifest = self.layout.base.join("metrics-api.json");
        write(&manifest, &metrics_api_manifest(port));
        self.plane
            .kubectl(&["apply", "-f", &manifest.display().to_string()])
            .unwrap_or_else(|e| panic!("register the metrics API: {e}"));
        wait_until("the metrics API", Duration::from_secs(90), || {
            self.plane
                .kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"])
                .map_err(|e| format!("{e}\n{}", self.log_tail("metrics-server", 10)))
        });
    }
}

/// The metrics API, served by the metrics-server on the bridge (a selector-less Service and its
/// EndpointSlice, an APIService).
fn metrics_api_manifest(port: u16) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "metrics-server", "namespace": "kube-system"},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}
            },
            {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "metrics-server-postcache-node", "namespace": "kube-system",
                             "labels": {"kubernetes.io/service-name": "metrics-server"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [config::GATEWAY.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
            },
            {
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": "v1beta1.metrics.k8s.io"},
                "spec": {
                    "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                    "group": "metrics.k8s.io", "version": "v1beta1",
                    "insecureSkipTLSVerify": true,
                    "groupPriorityMinimum": 100, "versionPriority": 100
                }
            }
        ]
    })
    .to_string()
}

impl Node {
    /// Deletes what the manifest `name` (in the node's directory) created, without waiting.
    fn delete_manifest(&self, name: &str) {
        let file = self.layout.base.join(name).display().to_string();
        let _ = self
            .plane
            .kubectl(&["delete", "--wait=false", "--ignore-not-found", "-f", &file]);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The metrics API first: an APIService whose server is gone breaks discovery.
        self.delete_manifest("metrics-api.json");
        drop(self.relay.take());
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
        host::clean(&self.layout.base);
        self.sysctls.restore();
        self.delete_manifest("cluster-services.json");
        for kind in ["persistentvolumes", "storageclasses"] {
            let _ = self.plane.kubectl(&[
                "delete",
                kind,
                "-l",
                &format!("{TAINT}=true"),
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
        let _ = self.plane.kubectl(&[
            "delete",
            "node",
            Node::NAME,
            "--wait=false",
            "--ignore-not-found",
        ]);
        let _ = std::fs::remove_dir_all(&self.layout.base);
    }
}

impl Node {
    /// What a test checks after the node is gone: nothing of it left on the machine.
    ///
    /// # Errors
    /// The leftovers found: the bridge, mounts under the node's dir, `KUBE-*` chains, `kubepods`
    /// cgroups.
    pub fn leftovers() -> Result<(), String> {
        let base = std::env::temp_dir().join("postcache-node");
        let mut found = Vec::new();
        if host::bridge_exists() {
            found.push(format!("link {}", config::BRIDGE));
        }
        found.extend(
            host::mounts_under(&base)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        found.extend(
            host::kube_chains()
                .into_iter()
                .map(|c| format!("chain {c}")),
        );
        found.extend(
            host::leftover_cgroups()
                .into_iter()
                .map(|c| format!("cgroup {}", c.display())),
        );
        if found.is_empty() {
            Ok(())
        } else {
            Err(found.join("\n"))
        }
    }
}

const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
"#;

/// The cluster's Services backed by the host: `kube-dns` by CoreDNS on the node's address, and
/// the `kubernetes` Service (the apiserver writes no endpoints here) by the relay on the bridge.
fn cluster_services_manifest(node_ip: Ipv4Addr, relay: SocketAddr) -> String {
    let ports = serde_json::json!([
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
    ]);
    serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "spec": {"clusterIP": config::DNS_SERVICE_IP, "ports": ports}
            },
            {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kube-dns-postcache-node", "namespace": "kube-system",
                             "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true}}],
                "ports": ports
            },
            {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes-postcache-node", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [relay.ip().to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": relay.port(), "protocol": "TCP"}]
            }
        ]
    })
    .to_string()
}

/// The source address of the default route (a route lookup; nothing is sent).
fn node_ip() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.255"])
        .output()
        .expect("run ip route get");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("no source address in `ip route get`: {text}"))
}

fn http_ready(addr: SocketAddr, path: &'static str) -> Readiness {
    Box::new(move || match http_get(addr, path)? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("{path}: {status} {body}")),
    })
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn run(program: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
