//! The node's configuration files, rendered from its [`Layout`] without IO: containerd's
//! `config.toml` and registry `hosts.toml`, the CNI bridge, kubelet's and kube-proxy's
//! configuration, CoreDNS's Corefile.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Pod addresses on this node's bridge; outside kwok's `10.244.0.0/16` and the Service range.
pub(super) const POD_SUBNET: &str = "10.245.0.0/24";
/// The Service range the control plane's apiserver allocates from.
pub(super) const SERVICE_SUBNET: &str = "10.0.0.0/24";
/// The `kube-dns` Service's ClusterIP (kubelet's `clusterDNS`).
pub(super) const DNS_SERVICE_IP: &str = "10.0.0.10";
/// The bridge's address: the Pods' gateway, where the apiserver relay listens.
pub(super) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 245, 0, 1);
/// The bridge the CNI plugin creates; host-wide, deleted on teardown.
pub(super) const BRIDGE: &str = "cni0";
/// Debian's `containernetworking-plugins`.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Where every file and socket of the node lives, under one base directory.
pub(super) struct Layout {
    pub(super) base: PathBuf,
}

impl Layout {
    pub(super) fn containerd_socket(&self) -> PathBuf {
        self.base.join("containerd/containerd.sock")
    }
    pub(super) fn containerd_config(&self) -> PathBuf {
        self.base.join("containerd/config.toml")
    }
    pub(super) fn registry_hosts(&self) -> PathBuf {
        self.base.join("containerd/certs.d")
    }
    pub(super) fn cni_conf_dir(&self) -> PathBuf {
        self.base.join("cni/net.d")
    }
    pub(super) fn kubelet_root(&self) -> PathBuf {
        self.base.join("kubelet")
    }
    pub(super) fn kubelet_config(&self) -> PathBuf {
        self.base.join("kubelet.yaml")
    }
    pub(super) fn kube_proxy_config(&self) -> PathBuf {
        self.base.join("kube-proxy.yaml")
    }
    pub(super) fn corefile(&self) -> PathBuf {
        self.base.join("Corefile")
    }
    pub(super) fn log(&self, name: &str) -> PathBuf {
        self.base.join(format!("{name}.log"))
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

/// containerd 2.x: its own root, state and socket; runc without systemd; an OOM score no lower
/// than containerd's own (root here lacks CAP_SYS_RESOURCE); netns under the state dir, so that
/// unmounting the base dir removes them; the sandbox image from the local registry.
pub(super) fn containerd_toml(layout: &Layout, sandbox_image: &str) -> String {
    let base = &layout.base;
    let hosts = show(&layout.registry_hosts());
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{hosts}"

[plugins."io.containerd.transfer.v1.local"]
  config_path = "{hosts}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni}"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#,
        root = show(&base.join("containerd/root")),
        state = show(&base.join("containerd/state")),
        socket = show(&layout.containerd_socket()),
        cni = show(&layout.cni_conf_dir()),
    )
}

/// `certs.d/<host>/hosts.toml`: pull from the local registry over plain HTTP.
pub(super) fn registry_hosts_toml(registry: &str) -> String {
    format!(
        "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// A bridge with the pod subnet, no masquerading and no default route: a Pod reaches other Pods,
/// Services and the node's own address (CoreDNS), and nothing off this machine.
pub(super) fn cni_conflist(layout: &Layout, node_ip: Ipv4Addr) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "postcache",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": SERVICE_SUBNET}, {"dst": format!("{node_ip}/32")}],
                    "dataDir": show(&layout.base.join("cni/ipam")),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// kubelet on cgroup v1 with cgroupfs, no swap check, eviction thresholds low enough for a
/// test machine's disk, registered with a taint so that only Pods that ask land here.
/// The kubelet authenticates callers by client certificates of the cluster CA (`client_ca`: the
/// apiserver's, for `kubectl logs/exec/port-forward`) and lets them do anything.
pub(super) fn kubelet_yaml(
    layout: &Layout,
    ports: KubeletPorts,
    taint: &str,
    client_ca: &Path,
) -> String {
    let KubeletPorts { port, healthz } = ports;
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: "{client_ca}"}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
clusterDNS: ["{DNS_SERVICE_IP}"]
clusterDomain: cluster.local
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
podLogsDir: {logs}
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerWithTaints: [{{key: "{taint}", value: "true", effect: NoSchedule}}]
nodeStatusReportFrequency: 10s
syncFrequency: 5s
fileCheckFrequency: 5s
"#,
        socket = show(&layout.containerd_socket()),
        logs = show(&layout.base.join("pod-logs")),
        client_ca = show(client_ca),
    )
}

/// kubelet's ports (its API and healthz), free ones so that nothing else on the machine clashes.
#[derive(Clone, Copy)]
pub(super) struct KubeletPorts {
    pub(super) port: u16,
    pub(super) healthz: u16,
}

/// kube-proxy in iptables mode, touching no conntrack sysctl and no `route_localnet`.
pub(super) fn kube_proxy_yaml(
    kubeconfig: &Path,
    node_name: &str,
    healthz: u16,
    metrics: u16,
) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: "{kubeconfig}"}}
hostnameOverride: {node_name}
mode: iptables
clusterCIDR: {POD_SUBNET}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
iptables: {{localhostNodePorts: false, syncPeriod: 5s, minSyncPeriod: 0s}}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
"#,
        kubeconfig = show(kubeconfig),
    )
}

/// CoreDNS answers for `cluster.local` from the apiserver and forwards nothing (no name leaves
/// the machine).
pub(super) fn corefile(kubeconfig: &Path, node_ip: Ipv4Addr, health: u16, ready: u16) -> String {
    format!(
        r#".:53 {{
    bind {node_ip}
    errors
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} t
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"#,
        kubeconfig = show(kubeconfig),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            base: PathBuf::from("/tmp/n"),
        }
    }

    #[test]
    fn the_bridge_neither_masquerades_nor_routes_off_the_machine() {
        let conf: serde_json::Value =
            serde_json::from_str(&cni_conflist(&layout(), Ipv4Addr::new(192, 0, 2, 2))).unwrap();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge.get("isDefaultGateway"), None);
        let routes = bridge["ipam"]["routes"].as_array().unwrap();
        assert!(routes.iter().all(|r| r["dst"] != "0.0.0.0/0"), "{routes:?}");
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/n/cni/ipam");
    }

    #[test]
    fn containerd_keeps_its_state_and_netns_under_the_base_dir() {
        let toml = containerd_toml(&layout(), "127.0.0.1:5000/pause:1");
        for line in [
            "root = \"/tmp/n/containerd/root\"",
            "state = \"/tmp/n/containerd/state\"",
            "netns_mounts_under_state_dir = true",
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
            "sandbox = \"127.0.0.1:5000/pause:1\"",
        ] {
            assert!(toml.contains(line), "{line} missing:\n{toml}");
        }
    }
}
