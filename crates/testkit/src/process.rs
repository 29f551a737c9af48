//! One child process of a part: spawned, probed until ready, and stopped on drop.
//!
//! The fault handles (`kill`, `pause`, `resume`, `restart`) act on the child's whole process
//! group, so a PostgreSQL postmaster and its backends stop and resume together.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, User};

/// A readiness probe: `Ok` once the process serves.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How to start a process and how to tell that it is ready.
pub struct ProcessSpec {
    /// Short name for messages, e.g. `postgres-primary`.
    pub name: String,
    /// The program, usually from [`tool`](crate::tool).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Run as this user when the test runs as root (PostgreSQL refuses to run as root).
    pub user: Option<String>,
    /// File that receives stdout and stderr; its tail goes into failure messages.
    pub log: PathBuf,
    /// Polled until it succeeds, after every (re)start.
    pub ready: Readiness,
    /// How long readiness may take.
    pub ready_timeout: Duration,
    /// Signal for an orderly stop (SIGKILL follows after 10 s).
    pub stop_signal: Signal,
}

impl ProcessSpec {
    /// The pinned program `name` ([`tool`](crate::tool)) with `args`, logging to `log`: no extra
    /// environment, the test's own user, 60 s to become ready, SIGTERM to stop.
    pub fn of_tool(name: &str, args: Vec<String>, log: PathBuf, ready: Readiness) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            program: crate::tool(name),
            args,
            env: vec![],
            user: None,
            log,
            ready,
            ready_timeout: Duration::from_secs(60),
            stop_signal: Signal::SIGTERM,
        }
    }
}

/// A running child process with fault handles; stopped (then its group killed) on drop.
pub struct Process {
    spec: ProcessSpec,
    child: Mutex<Option<Child>>,
}

impl Process {
    /// Spawns the process and waits until its readiness probe passes.
    ///
    /// # Panics
    /// When it cannot be spawned, exits early or is not ready in time; the message carries the
    /// tail of its log.
    pub fn start(spec: ProcessSpec) -> Process {
        let process = Process {
            spec,
            child: Mutex::new(None),
        };
        process.spawn_and_wait();
        process
    }

    /// The spec's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The process id of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// SIGKILLs the process group and reaps the child: a crash, as far as clients can tell.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            signal_group(&child, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Freezes the process group (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        if let Some(child) = self.lock().as_ref() {
            signal_group(child, Signal::SIGSTOP);
        }
    }

    /// Thaws a paused process group (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = self.lock().as_ref() {
            signal_group(child, Signal::SIGCONT);
        }
    }

    /// Kills the process (if running) and starts it again with the same arguments, ports and data,
    /// waiting for readiness.
    ///
    /// # Panics
    /// As [`Process::start`].
    pub fn restart(&self) {
        self.kill();
        self.spawn_and_wait();
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.spec.log, lines)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_and_wait(&self) {
        let spec = &self.spec;
        let child = spawn(spec)
            .unwrap_or_else(|e| panic!("cannot start {} ({:?}): {e}", spec.name, spec.program));
        *self.lock() = Some(child);
        let deadline = Instant::now() + spec.ready_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let probe = (spec.ready)();
            if probe.is_ok() {
                return;
            }
            if let Some(status) = self
                .lock()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited with {status} before it was ready\n--- log tail ---\n{}",
                    spec.name,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                let last = probe.err().unwrap_or_default();
                panic!(
                    "{} not ready after {:?}: {last}\n--- log tail ---\n{}",
                    spec.name,
                    spec.ready_timeout,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(mut child) = self.lock().take() else {
            return;
        };
        signal_group(&child, Signal::SIGCONT);
        signal_group(&child, self.spec.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The leader is gone; make sure no straggler of its group survives it.
                signal_group(&child, Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(&child, Signal::SIGKILL);
        let _ = child.wait();
    }
}

fn signal_group(child: &Child, signal: Signal) {
    // Each child leads its own process group (see `spawn`), so the group id is its pid.
    let _ = killpg(Pid::from_raw(child.id() as i32), signal);
}

fn spawn(spec: &ProcessSpec) -> std::io::Result<Child> {
    let log = File::options().create(true).append(true).open(&spec.log)?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    if let Some(user) = spec
        .user
        .as_deref()
        .filter(|_| nix::unistd::geteuid().is_root())
    {
        let user = User::from_name(user)?
            .ok_or_else(|| std::io::Error::other(format!("no user {user}")))?;
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    #[allow(unsafe_code)]
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    spawn_from_reaper_thread(command)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends. Test threads end after
/// each test, so every child is forked by this one thread, which lives as long as the process.
static SPAWNER: LazyLock<Mutex<mpsc::Sender<SpawnRequest>>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("testkit-spawner".into())
        .spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })
        .expect("the spawner thread starts");
    Mutex::new(tx)
});

fn spawn_from_reaper_thread(command: Command) -> std::io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    SPAWNER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    last_lines(&text, lines)
}

/// The last `lines` lines of `text`.
pub(crate) fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &std::path::Path, ready_file: PathBuf) -> ProcessSpec {
        let marker = ready_file.clone();
        ProcessSpec {
            name: "sleeper".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "echo started; touch {}; exec sleep 600",
                    ready_file.display()
                ),
            ],
            env: vec![],
            user: None,
            log: dir.join("sleeper.log"),
            ready: Box::new(move || {
                if marker.exists() {
                    Ok(())
                } else {
                    Err("no marker yet".into())
                }
            }),
            ready_timeout: Duration::from_secs(10),
            stop_signal: Signal::SIGTERM,
        }
    }

    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    #[test]
    fn fault_handles_act_on_the_real_process_and_drop_stops_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ready");
        let process = Process::start(sleeper(dir.path(), marker.clone()));
        let pid = process.pid().unwrap();
        // Ready once the marker exists; the shell may still be running on to its sleep.
        crate::wait_until("sleeping state", Duration::from_secs(5), || {
            (state(pid) == Some('S'))
                .then_some(())
                .ok_or(format!("state {:?}", state(pid)))
        });
        assert!(process.log_tail(5).contains("started"));

        process.pause();
        crate::wait_until("stopped state", Duration::from_secs(5), || {
            (state(pid) == Some('T'))
                .then_some(())
                .ok_or("not stopped".to_owned())
        });
        process.resume();
        crate::wait_until("running state", Duration::from_secs(5), || {
            (state(pid) == Some('S'))
                .then_some(())
                .ok_or("still stopped".to_owned())
        });

        std::fs::remove_file(&marker).unwrap();
        process.restart();
        let new_pid = process.pid().unwrap();
        assert_ne!(pid, new_pid);
        assert_eq!(state(pid), None, "the old process is gone");

        process.kill();
        assert_eq!(state(new_pid), None);
        process.restart();
        let last = process.pid().unwrap();
        drop(process);
        assert_eq!(state(last), None, "drop stops the process");
    }

    #[test]
    fn an_early_exit_fails_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sleeper(dir.path(), dir.path().join("never"));
        spec.args = vec!["-c".into(), "echo boom-from-child; exit 3".into()];
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Process::start(spec)))
            .map(drop)
            .unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert!(message.contains("exited with"), "{message}");
        assert!(message.contains("boom-from-child"), "{message}");
    }
}
