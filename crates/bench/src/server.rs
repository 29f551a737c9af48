//! The server process seen from `/proc`: CPU time and resident memory; and this process's own
//! file-descriptor limit (thousands of subscribers need thousands of sockets).

use serde::Serialize;

/// CPU seconds (user + system) the process `pid` has used so far.
pub(crate) fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based, see proc(5)).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(ticks as f64 / per_second as f64)
}

/// Resident set size of `pid`, in bytes.
pub(crate) fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the server used during the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// The process.
    pub pid: i32,
    /// CPU seconds (user + system) it used in the window.
    pub cpu_seconds: f64,
    /// Of one core: 1.0 is one core busy for the whole window.
    pub cores: f64,
    /// Resident memory at the end of the window.
    pub rss_bytes: u64,
}

/// Samples `pid` at the start of a window.
pub(crate) struct Window {
    pid: i32,
    cpu: f64,
    started: std::time::Instant,
}

impl Window {
    pub(crate) fn start(pid: Option<i32>) -> Option<Window> {
        let pid = pid?;
        Some(Window {
            pid,
            cpu: cpu_seconds(pid)?,
            started: std::time::Instant::now(),
        })
    }

    pub(crate) fn end(&self) -> Option<ServerUsage> {
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        Some(ServerUsage {
            pid: self.pid,
            cpu_seconds: cpu,
            cores: cpu / self.started.elapsed().as_secs_f64().max(f64::EPSILON),
            rss_bytes: rss_bytes(self.pid)?,
        })
    }
}

/// Raises this process's soft limit of open files to its hard limit.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id() as i32;
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).unwrap() > 0.0);
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
        assert!(cpu_seconds(i32::MAX).is_none());
    }
}
