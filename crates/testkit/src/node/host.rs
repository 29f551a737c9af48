//! What a real node changes on the machine beyond its own directory, and how it is undone.
//!
//! A node is host-wide: the `cni0` bridge, the `kubepods` cgroups, iptables chains, mounts under
//! the kubelet root, container processes and their shims, and a few sysctls are shared by the
//! whole machine. [`HostLock`] lets one node at a time exist (a file lock, so that test binaries
//! running side by side wait for each other), and [`clean`] removes everything a node leaves,
//! whether it stopped in order or a crashed run left it behind.
//!
//! ```text
//! HostLock::acquire ─▶ clean(leftovers) ─▶ Sysctls::save ─▶ node runs ─▶ clean ─▶ Sysctls::restore
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::config::BRIDGE;

/// Sysctls that kubelet, kube-proxy or the CNI bridge may change; saved before and restored after.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

/// Held while a node exists on this machine.
pub(super) struct HostLock {
    _lock: Flock<File>,
}

impl HostLock {
    /// Waits until no other node (in this process or another) runs on the machine.
    ///
    /// # Panics
    /// When the lock file cannot be opened or locked.
    pub(super) fn acquire(path: &Path) -> HostLock {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()));
        HostLock { _lock: lock }
    }
}

/// The sysctl values found before a node started, kept in a file so that a run after a crash
/// restores them too.
pub(super) struct Sysctls {
    file: PathBuf,
}

impl Sysctls {
    /// Restores what a crashed run saved (if anything), then saves the current values.
    pub(super) fn save(file: PathBuf) -> Sysctls {
        let sysctls = Sysctls { file };
        sysctls.restore();
        let saved: String = SYSCTLS
            .iter()
            .filter_map(|key| {
                let value = std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
                Some(format!("{key}={}\n", value.trim()))
            })
            .collect();
        std::fs::write(&sysctls.file, saved)
            .unwrap_or_else(|e| panic!("write {}: {e}", sysctls.file.display()));
        sysctls
    }

    /// Writes the saved values back (those that changed) and forgets them.
    pub(super) fn restore(&self) {
        let Ok(saved) = std::fs::read_to_string(&self.file) else {
            return;
        };
        for (key, value) in saved.lines().filter_map(|l| l.split_once('=')) {
            let path = Path::new("/proc/sys").join(key);
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != value {
                let _ = std::fs::write(&path, value);
            }
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Removes everything a node rooted at `base` leaves on the machine: container processes and
/// shims, mounts under `base` (kubelet volumes, rootfs, netns), the bridge, kube iptables chains
/// and the `kubepods` cgroups. Processes the test kit started itself stop before (on drop).
pub(super) fn clean(base: &Path) {
    kill_until_gone("container processes", kubepods_pids);
    kill_until_gone("processes of the node's dir", || pids_mentioning(base));
    unmount_under(base);
    let _ = Command::new("ip").args(["link", "delete", BRIDGE]).output();
    remove_kube_chains();
    remove_kubepods_cgroups();
    remove_container_log_links(base);
}

fn kill_until_gone(what: &str, pids: impl Fn() -> Vec<i32>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = pids();
        if found.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("node teardown: {what} survive SIGKILL: {found:?}");
            return;
        }
        for pid in found {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every process in a `kubepods` cgroup of any v1 hierarchy.
fn kubepods_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    for dir in kubepods_cgroups() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Processes whose command line names `base` (containerd's shims carry its socket path).
fn pids_mentioning(base: &Path) -> Vec<i32> {
    let needle = base.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Unmounts every mount point under `base`, deepest first, lazily where one is still busy.
fn unmount_under(base: &Path) {
    for _ in 0..5 {
        let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_point))
            .filter(|p| Path::new(p).starts_with(base))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").arg(&point).output();
            let _ = Command::new("umount").args(["-l", &point]).output();
        }
    }
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape_mount_point(raw: &str) -> String {
    raw.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mount points under `base` still mounted (empty after a complete teardown).
pub(super) fn mounts_under(base: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_point))
        .filter(|p| Path::new(p).starts_with(base))
        .collect()
}

/// `KUBE-*` chains in any table of iptables or ip6tables (empty after a complete teardown).
pub(super) fn kube_chains() -> Vec<String> {
    let mut chains = Vec::new();
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            for line in rules(program, table) {
                if let Some(chain) = line.strip_prefix("-N ").filter(|c| c.starts_with("KUBE-")) {
                    chains.push(format!("{program} -t {table} {chain}"));
                }
            }
        }
    }
    chains
}

fn rules(program: &str, table: &str) -> Vec<String> {
    Command::new(program)
        .args(["-w", "-t", table, "-S"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the jumps into `KUBE-*` chains from the built-in chains, then flushes and deletes
/// those chains (kube-proxy's and the ones kubelet leaves, such as `KUBE-FIREWALL`).
fn remove_kube_chains() {
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle"] {
            let lines = rules(program, table);
            for rule in lines.iter().filter_map(|l| l.strip_prefix("-A ")) {
                let chain = rule.split(' ').next().unwrap_or_default();
                if !chain.starts_with("KUBE-") && rule.contains("KUBE-") {
                    let _ = Command::new(program)
                        .args(["-w", "-t", table, "-D"])
                        .args(split_rule(rule))
                        .output();
                }
            }
            let chains: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|c| c.starts_with("KUBE-"))
                .collect();
            for flag in ["-F", "-X"] {
                for chain in &chains {
                    let _ = Command::new(program)
                        .args(["-w", "-t", table, flag, chain])
                        .output();
                }
            }
        }
    }
}

/// Splits a rule as `iptables -S` prints it: words, with comments in double quotes.
fn split_rule(rule: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, rule.chars());
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => word.extend(chars.next()),
            ' ' if !quoted => words.extend((!word.is_empty()).then(|| std::mem::take(&mut word))),
            c => word.push(c),
        }
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// The `kubepods` cgroup of every v1 hierarchy and all of its descendants, deepest first.
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for hierarchy in hierarchies.filter_map(Result::ok) {
        collect_dirs(&hierarchy.path().join("kubepods"), &mut found);
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_owned());
}

fn remove_kubepods_cgroups() {
    for dir in kubepods_cgroups() {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// `kubepods` cgroups still present (empty after a complete teardown).
pub(super) fn leftover_cgroups() -> Vec<PathBuf> {
    kubepods_cgroups()
}

/// kubelet links each container's log into `/var/log/containers`, whatever its root dir.
fn remove_container_log_links(base: &Path) {
    let Ok(entries) = std::fs::read_dir("/var/log/containers") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(base)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Creates the Pods' bridge with its gateway address (`gateway/prefix`) before the CNI plugin
/// would, so the apiserver relay can listen there from the start (the plugin adopts it).
pub(super) fn create_bridge(gateway_cidr: &str) {
    for args in [
        vec!["link", "add", BRIDGE, "type", "bridge"],
        vec!["addr", "add", gateway_cidr, "dev", BRIDGE],
        vec!["link", "set", BRIDGE, "up"],
    ] {
        let out = Command::new("ip").args(&args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// True while the bridge exists.
pub(super) fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_split_like_a_shell_would() {
        let rule = r#"INPUT -m comment --comment "kubernetes \"x\" ports" -j KUBE-NODEPORTS"#;
        assert_eq!(
            split_rule(rule),
            [
                "INPUT",
                "-m",
                "comment",
                "--comment",
                "kubernetes \"x\" ports",
                "-j",
                "KUBE-NODEPORTS"
            ]
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount_point("/a\\040b/c"), "/a b/c");
    }
}
