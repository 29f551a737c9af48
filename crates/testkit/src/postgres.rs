//! PostgreSQL: one primary and N hot-standby replicas streaming from it.
//!
//! ```text
//! initdb ─▶ primary ─▶ pg_basebackup -R ─▶ replica 0..N  (hot standby, streaming)
//! ```
//! Tests isolate themselves with [`Postgres::create_database`]; the database reaches the replicas
//! through replication like any other change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{Process, ProcessSpec};
use crate::shared::SharedSlot;
use crate::{free_port, tool, unique_name, wait_until};

const USER: &str = "postgres";

/// A PostgreSQL primary with streaming read replicas, on loopback, in a temp dir.
pub struct Postgres {
    // Field order is drop order: replicas stop before the primary, the directory goes last.
    replicas: Vec<Process>,
    replica_ports: Vec<u16>,
    primary: Process,
    port: u16,
    _dir: TempDir,
}

impl Postgres {
    /// Starts a primary and `replicas` streaming replicas.
    ///
    /// # Panics
    /// When a step fails; the message names it and carries its output.
    pub fn start(replicas: usize) -> Postgres {
        Postgres::start_with(replicas, false)
    }

    /// [`Postgres::start`] with TLS on every server (`ssl=on`, a certificate of the test CA in
    /// the temp dir: [`Postgres::ca_file`]); clients may still connect without TLS.
    pub fn start_tls(replicas: usize) -> Postgres {
        Postgres::start_with(replicas, true)
    }

    /// The CA that signed the servers' certificates (with [`Postgres::start_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    fn start_with(replicas: usize, tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("postcache-pg-")
            .tempdir()
            .expect("temp dir");
        let tls = tls.then(|| {
            let ca = crate::TestCa::create(dir.path());
            // PostgreSQL refuses a key others may read.
            std::fs::set_permissions(
                ca.key(),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod the key");
            for file in [ca.cert(), ca.key()] {
                give_to_postgres_user(&file);
            }
            ca
        });
        give_to_postgres_user(dir.path());
        let port = free_port();
        let data = dir.path().join("primary");
        run_as_postgres(
            Command::new(tool("initdb"))
                .args([
                    "-U",
                    USER,
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
        )
        .unwrap_or_else(|e| panic!("initdb failed: {e}"));
        let primary = Process::start(server_spec(
            "postgres-primary",
            dir.path(),
            &data,
            port,
            false,
            tls.as_ref(),
        ));

        let mut replica_ports = Vec::new();
        let mut processes = Vec::new();
        for i in 0..replicas {
            let replica_port = free_port();
            let replica_data = dir.path().join(format!("replica-{i}"));
            run_as_postgres(
                Command::new(tool("pg_basebackup"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
                    .args(["-R", "-X", "stream", "-c", "fast", "--no-sync", "-D"])
                    .arg(&replica_data),
            )
            .unwrap_or_else(|e| panic!("pg_basebackup for replica {i} failed: {e}"));
            let name = format!("postgres-replica-{i}");
            processes.push(Process::start(server_spec(
                &name,
                dir.path(),
                &replica_data,
                replica_port,
                true,
                tls.as_ref(),
            )));
            replica_ports.push(replica_port);
        }
        Postgres {
            replicas: processes,
            replica_ports,
            primary,
            port,
            _dir: dir,
        }
    }

    /// A primary with one replica, shared by the tests of this binary.
    pub fn shared() -> Arc<Postgres> {
        static SLOT: SharedSlot<Postgres> = SharedSlot::new();
        SLOT.get_or_start(|| Postgres::start(1))
    }

    /// The primary's process (fault handles).
    pub fn primary(&self) -> &Process {
        &self.primary
    }

    /// Replica `i`'s process (fault handles).
    ///
    /// # Panics
    /// When there is no replica `i`.
    pub fn replica(&self, i: usize) -> &Process {
        &self.replicas[i]
    }

    /// The primary's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://` URL of database `db` on the primary.
    pub fn primary_url(&self, db: &str) -> String {
        url(self.port, db)
    }

    /// Each replica's port on 127.0.0.1.
    pub fn replica_ports(&self) -> &[u16] {
        &self.replica_ports
    }

    /// The URL of database `db` on whatever listens on loopback `port` (a proxy in front of
    /// these servers).
    pub fn url_on_port(&self, port: u16, db: &str) -> String {
        url(port, db)
    }

    /// `postgres://` URLs of database `db` on each replica.
    pub fn replica_urls(&self, db: &str) -> Vec<String> {
        self.replica_ports.iter().map(|&p| url(p, db)).collect()
    }

    /// Creates a fresh database for one test and waits until every replica has it.
    /// Returns its name.
    ///
    /// # Panics
    /// When the database cannot be created or does not reach a replica in time.
    pub fn create_database(&self) -> String {
        let name = unique_name("t").replace('-', "_");
        psql(self.port, "postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        for &port in &self.replica_ports {
            wait_until(
                &format!("database {name} on the replica"),
                Duration::from_secs(30),
                || {
                    psql(
                        port,
                        "postgres",
                        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
                    )
                    .and_then(|out| {
                        if out == "1" {
                            Ok(())
                        } else {
                            Err("not replicated yet".into())
                        }
                    })
                },
            );
        }
        name
    }

    /// Runs `sql` with psql on the primary and returns its unaligned, tuples-only output.
    ///
    /// # Errors
    /// psql's error output.
    pub fn psql_primary(&self, db: &str, sql: &str) -> Result<String, String> {
        psql(self.port, db, sql)
    }

    /// Waits (up to 10 s) until replica `i` has replayed everything the primary has written so
    /// far.
    ///
    /// # Panics
    /// When it does not catch up in time, or psql fails.
    pub fn wait_for_replica(&self, i: usize, db: &str) {
        let lsn = self
            .psql_primary(db, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            .expect("the primary's WAL position");
        let sql = format!(
            "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn >= {}",
            lsn.trim()
        );
        crate::poll(Duration::from_secs(10), || {
            let out = self.psql_replica(i, db, &sql)?;
            (out.trim() == "t").then_some(()).ok_or(out)
        })
        .unwrap_or_else(|e| panic!("replica {i} did not catch up: {e}"));
    }

    /// Runs `sql` with psql on replica `i` (see [`Postgres::psql_primary`]).
    ///
    /// # Errors
    /// psql's error output.
    pub fn psql_replica(&self, i: usize, db: &str, sql: &str) -> Result<String, String> {
        psql(self.replica_ports[i], db, sql)
    }
}

fn url(port: u16, db: &str) -> String {
    format!("postgres://{USER}@127.0.0.1:{port}/{db}")
}

fn server_spec(
    name: &str,
    dir: &Path,
    data: &Path,
    port: u16,
    replica: bool,
    tls: Option<&crate::TestCa>,
) -> ProcessSpec {
    let mut args = vec![
        "-D".to_owned(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
    ];
    args.extend(["-k".into(), dir.display().to_string()]);
    for setting in [
        "listen_addresses=127.0.0.1",
        // Durability of the test cluster itself does not matter; speed does.
        "fsync=off",
        "full_page_writes=off",
        "wal_level=replica",
        "max_wal_senders=10",
        "wal_keep_size=256MB",
        "hot_standby=on",
        "hot_standby_feedback=on",
        "wal_receiver_status_interval=1s",
        "max_connections=300",
        "shared_preload_libraries=pg_stat_statements",
        "pg_stat_statements.track=all",
    ] {
        args.extend(["-c".into(), setting.into()]);
    }
    if let Some(ca) = tls {
        args.extend(["-c".into(), "ssl=on".into()]);
        args.extend([
            "-c".into(),
            format!("ssl_cert_file={}", ca.cert().display()),
        ]);
        args.extend(["-c".into(), format!("ssl_key_file={}", ca.key().display())]);
    }
    ProcessSpec {
        name: name.to_owned(),
        program: tool("postgres"),
        args,
        env: vec![],
        user: Some(USER.into()),
        log: dir.join(format!("{name}.log")),
        ready: Box::new(move || {
            let out = psql(port, "postgres", "SELECT pg_is_in_recovery()")?;
            match (replica, out.as_str()) {
                (false, "f") | (true, "t") => Ok(()),
                _ => Err(format!("pg_is_in_recovery() = {out}")),
            }
        }),
        ready_timeout: Duration::from_secs(60),
        // SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
        stop_signal: Signal::SIGINT,
    }
}

fn psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    psql_at("127.0.0.1", port, USER, None, db, sql)
}

/// Runs `sql` with psql against `host:port` as `user` (with `password`, else trust or peer) on
/// database `db`: unaligned, tuples only, stopping at the first error; connecting gives up after
/// 5 s. Returns the output, trimmed.
///
/// # Errors
/// psql's error output, or why it could not run.
pub fn psql_at(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
    sql: &str,
) -> Result<String, String> {
    let mut command = Command::new(tool("psql"));
    command
        .args(["-h", host, "-p", &port.to_string(), "-U", user, "-d", db])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let out = command.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn run_as_postgres(command: &mut Command) -> Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        let user = nix::unistd::User::from_name(USER)
            .ok()
            .flatten()
            .ok_or("no `postgres` user: run scripts/install-deps")?;
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    run(command)
}

fn run(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn give_to_postgres_user(dir: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(Some(user)) = nix::unistd::User::from_name(USER) {
        nix::unistd::chown(dir, Some(user.uid), Some(user.gid))
            .expect("chown the PostgreSQL temp dir");
    }
}
