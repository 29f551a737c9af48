//! The data-plane scripts the operator embeds (`postcache_operator::scripts`), run byte for byte
//! against real local processes: a Redis Cluster formed, grown and shrunk with its keys intact, and
//! a PostgreSQL replica seeded from a primary and streaming.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use postcache_operator::scripts;
use postcache_testkit::{Process, ProcessSpec, RedisNodes, free_port, tool, wait_until};

const PASSWORD: &str = "s3cret-never-logged";

/// A script written to a file readable by everyone (the replica seed runs as `postgres`).
struct Script {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Script {
    fn new(text: &str) -> Script {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("script.sh");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Script { _dir: dir, path }
    }

    /// Runs the script with `args` and `env` (PATH gets the tools' directories first), as `user`
    /// when the test runs as root. Returns stdout + stderr.
    fn run(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        user: Option<&str>,
    ) -> Result<String, String> {
        let mut command = match user.filter(|_| running_as_root()) {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={user}"),
                    &format!("--regid={user}"),
                    "--init-groups",
                    "bash",
                ]);
                c
            }
            None => Command::new("bash"),
        };
        command.arg(&self.path).args(args).env("PATH", tool_path());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

/// PATH with the directories of the programs the scripts call first.
fn tool_path() -> String {
    let mut dirs: Vec<PathBuf> = ["redis-cli", "psql", "pg_basebackup", "pg_isready"]
        .iter()
        .filter_map(|t| tool(t).parent().map(Path::to_path_buf))
        .collect();
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap().into_string().unwrap()
}

/// Whether this process runs as root (then servers and the seed run as `postgres`).
fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One node's view: node id → (address, role, master id, slot count), from `CLUSTER NODES`.
type ClusterView = BTreeMap<String, (String, String, String, usize)>;

fn view(nodes: &RedisNodes, i: usize) -> ClusterView {
    let text = nodes.cli(i, &["cluster", "nodes"]).unwrap();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let addr = f.get(1)?.split(['@', ',']).next()?.to_owned();
            let role = if f[2].contains("master") {
                "master"
            } else {
                "replica"
            };
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
                    None => 1,
                })
                .sum();
            Some((
                f[0].to_owned(),
                (addr, role.to_owned(), f[3].to_owned(), slots),
            ))
        })
        .collect()
}

fn info(nodes: &RedisNodes, i: usize, field: &str) -> String {
    let text = nodes.cli(i, &["cluster", "info"]).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Waits until each of `members` sees a healthy cluster of exactly those nodes, every slot assigned.
fn assert_healthy(nodes: &RedisNodes, members: &[usize]) {
    for &i in members {
        wait_until(
            &format!("node {i} to see a healthy cluster"),
            Duration::from_secs(60),
            || {
                let (state, slots, known) = (
                    info(nodes, i, "cluster_state"),
                    info(nodes, i, "cluster_slots_assigned"),
                    info(nodes, i, "cluster_known_nodes"),
                );
                if state == "ok" && slots == "16384" && known == members.len().to_string() {
                    Ok(())
                } else {
                    Err(format!("state {state}, slots {slots}, known {known}"))
                }
            },
        );
    }
}

/// The index in `addrs` and the node id of the master that owns `slot`, as node 0 sees it.
fn owner(nodes: &RedisNodes, addrs: &[String], slot: usize) -> (usize, String) {
    let text = nodes.cli(0, &["cluster", "nodes"]).unwrap();
    text.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let owns = f[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<usize>(), b.parse::<usize>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            });
            let addr = f[1].split(['@', ',']).next()?;
            owns.then(|| (addrs.iter().position(|x| x == addr).unwrap(), f[0].to_owned()))
        })
        .unwrap()
}

fn masters(view: &ClusterView) -> Vec<(&String, usize)> {
    view.values()
        .filter(|(_, role, _, _)| role == "master")
        .map(|(addr, _, _, slots)| (addr, *slots))
        .collect()
}

fn write_keys(nodes: &RedisNodes, n: usize) {
    for k in 0..n {
        let out = nodes
            .cli(
                0,
                &["-c", "set", &format!("key:{k}"), &format!("value-{k}")],
            )
            .unwrap();
        assert_eq!(out, "OK", "SET key:{k}");
    }
}

fn assert_keys_readable(nodes: &RedisNodes, from: usize, n: usize) {
    for k in 0..n {
        let out = nodes
            .cli(from, &["-c", "get", &format!("key:{k}")])
            .unwrap();
        assert_eq!(out, format!("value-{k}"), "GET key:{k} through node {from}");
    }
}

#[test]
fn redis_cluster_script_bootstraps_grows_and_drains_keeping_every_key() {
    let nodes = RedisNodes::start(8, Some(PASSWORD));
    let addrs = nodes.addrs();
    let script = Script::new(scripts::REDIS_CLUSTER);
    let run = |step: &str, shards: &str, list: &[String]| {
        let list = list.join(" ");
        let env = [
            ("REDIS_NODES", list.as_str()),
            ("REDIS_SHARDS", shards),
            ("REDIS_REPLICAS_PER_SHARD", "1"),
            ("REDIS_PASSWORD", PASSWORD),
            ("REDIS_TIMEOUT_SECONDS", "120"),
        ];
        let out = script
            .run(&[step], &env, None)
            .unwrap_or_else(|e| panic!("{step} failed:\n{e}"));
        assert!(
            !out.contains(PASSWORD),
            "{step} printed the password:\n{out}"
        );
        out
    };

    // Bootstrap 3 shards × 1 replica from the first six nodes.
    run("bootstrap", "3", &addrs[..6]);
    assert_healthy(&nodes, &[0, 1, 2, 3, 4, 5]);
    let formed = view(&nodes, 0);
    let by_addr: Vec<_> = masters(&formed)
        .into_iter()
        .map(|(a, _)| a.clone())
        .collect();
    assert_eq!(by_addr.len(), 3, "{formed:?}");
    for first in &addrs[..3] {
        assert!(
            by_addr.contains(first),
            "pod ordinals 0..3 are the masters: {formed:?}"
        );
    }
    write_keys(&nodes, 200);
    let again = run("bootstrap", "3", &addrs[..6]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(
        view(&nodes, 0),
        formed,
        "a second bootstrap changed the cluster"
    );

    // Grow to 4 shards: nodes 6 and 7 join, slots spread evenly, every master gets a replica.
    run("add-shards", "4", &addrs);
    assert_healthy(&nodes, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let grown = view(&nodes, 0);
    let slots = masters(&grown);
    assert_eq!(slots.len(), 4, "{grown:?}");
    for (addr, n) in &slots {
        assert!(
            (4000..=4200).contains(n),
            "{addr} owns {n} slots: {grown:?}"
        );
    }
    for (id, (addr, role, _, _)) in &grown {
        if role == "master" {
            let replicas = grown
                .values()
                .filter(|(_, r, m, _)| r == "replica" && m == id)
                .count();
            assert_eq!(
                replicas, 1,
                "master {addr} has {replicas} replicas: {grown:?}"
            );
        }
    }
    assert_keys_readable(&nodes, 7, 200);
    run("add-shards", "4", &addrs);
    assert_eq!(
        view(&nodes, 0),
        grown,
        "a second add-shards changed the cluster"
    );

    // An interrupted migration (a slot left half-moved between two masters) is finished before
    // anything else moves.
    let slot = nodes.cli(0, &["cluster", "keyslot", "key:0"]).unwrap();
    let (from, from_id) = owner(&nodes, &addrs, slot.parse().unwrap());
    let (to, to_id) = (0..3)
        .filter(|&i| i != from)
        .map(|i| (i, nodes.cli(i, &["cluster", "myid"]).unwrap()))
        .find(|(i, _)| masters(&grown).iter().any(|(addr, _)| **addr == addrs[*i]))
        .unwrap();
    nodes
        .cli(to, &["cluster", "setslot", &slot, "importing", &from_id])
        .unwrap();
    nodes
        .cli(from, &["cluster", "setslot", &slot, "migrating", &to_id])
        .unwrap();

    // Drain back to 3: the leaving nodes 6 and 7 own nothing and know nobody, keys survive.
    let drained_out = run("drain-shards", "3", &addrs);
    assert!(
        drained_out.contains("running --cluster fix"),
        "{drained_out}"
    );
    for i in 0..6 {
        let text = nodes.cli(i, &["cluster", "nodes"]).unwrap();
        assert!(
            !text.contains("->-") && !text.contains("-<-"),
            "an open slot is left:\n{text}"
        );
    }
    assert_healthy(&nodes, &[0, 1, 2, 3, 4, 5]);
    for leaving in [6, 7] {
        assert_eq!(info(&nodes, leaving, "cluster_known_nodes"), "1");
        assert_eq!(info(&nodes, leaving, "cluster_slots_assigned"), "0");
    }
    let drained = view(&nodes, 0);
    assert_eq!(masters(&drained).len(), 3, "{drained:?}");
    assert!(
        drained.values().all(|(addr, ..)| addrs[..6].contains(addr)),
        "{drained:?}"
    );
    assert_keys_readable(&nodes, 1, 200);
    run("drain-shards", "3", &addrs);
    assert_eq!(
        view(&nodes, 0),
        drained,
        "a second drain-shards changed the cluster"
    );
}

/// psql over TCP as the superuser the init script made, with its password (so the
/// `pg_hba.conf` entries it wrote are what let it in).
fn psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    postcache_testkit::psql_at("127.0.0.1", port, SUPERUSER, Some(PASSWORD), db, sql)
}

/// The superuser and database the primary init script creates (the operator's are `postcache`).
const SUPERUSER: &str = "feed";
const DATABASE: &str = "feed";

/// `postgres` on `data`, listening on 127.0.0.1:`port` (socket in `socket_dir`), as `postgres`
/// when the test runs as root; ready when `ready_sql` answers `t`.
fn server(
    name: &str,
    data: &str,
    port: u16,
    socket_dir: &Path,
    ready_sql: &'static str,
) -> Process {
    Process::start(ProcessSpec {
        name: name.into(),
        program: tool("postgres"),
        args: [
            "-D",
            data,
            "-p",
            &port.to_string(),
            "-k",
            &socket_dir.display().to_string(),
        ]
        .into_iter()
        .chain([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "wal_level=replica",
            "-c",
            "max_wal_senders=4",
        ])
        .map(str::to_owned)
        .collect(),
        env: vec![],
        user: running_as_root().then(|| "postgres".into()),
        log: socket_dir.join(format!("{name}.log")),
        ready: Box::new(move || match psql(port, "postgres", ready_sql)?.as_str() {
            "t" => Ok(()),
            other => Err(format!("{ready_sql} = {other}")),
        }),
        ready_timeout: Duration::from_secs(60),
        // SIGINT is PostgreSQL's fast shutdown.
        stop_signal: Signal::SIGINT,
    })
}

#[test]
fn postgres_scripts_make_a_primary_and_seed_a_streaming_replica() {
    let dir = tempfile::tempdir().unwrap();
    if running_as_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let primary_data = dir.path().join("primary");
    let primary_str = primary_data.display().to_string();
    // What a run killed half-way leaves: a staging directory, never a PGDATA.
    std::fs::create_dir_all(dir.path().join("primary.init/half-done")).unwrap();
    let init = Script::new(scripts::POSTGRES_PRIMARY_INIT);
    let init_env = [
        ("PGDATA", primary_str.as_str()),
        ("POSTGRES_USER", SUPERUSER),
        ("POSTGRES_PASSWORD", PASSWORD),
        ("POSTGRES_DB", DATABASE),
        ("REPLICATION_USER", "replicator"),
        ("REPLICATION_PASSWORD", PASSWORD),
    ];
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path().join("primary.init"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = init
        .run(&[], &init_env, Some("postgres"))
        .unwrap_or_else(|e| panic!("primary init: {e}"));
    assert!(
        !out.contains(PASSWORD),
        "primary init printed the password:\n{out}"
    );
    assert!(primary_data.join("PG_VERSION").exists(), "{out}");
    assert!(
        !dir.path().join("primary.init").exists(),
        "the staging directory is gone"
    );

    let port = free_port();
    let primary = server(
        "postgres-initialized-primary",
        &primary_str,
        port,
        dir.path(),
        "SELECT NOT pg_is_in_recovery()",
    );
    assert_eq!(
        psql(port, DATABASE, "SELECT current_database()"),
        Ok(DATABASE.into()),
        "the database exists and the superuser logs in over TCP with its password"
    );
    assert_eq!(
        psql(
            port,
            "postgres",
            "SELECT rolreplication AND rolcanlogin FROM pg_roles WHERE rolname = 'replicator'"
        ),
        Ok("t".into())
    );
    assert_eq!(
        psql(
            port,
            "postgres",
            "SELECT count(*) FROM pg_hba_file_rules WHERE database = '{replication}' \
             AND user_name = '{replicator}' AND auth_method = 'scram-sha-256' AND error IS NULL"
        ),
        Ok("1".into()),
        "one pg_hba entry lets the replication role replicate"
    );
    let again = init.run(&[], &init_env, Some("postgres")).unwrap();
    assert!(again.contains("nothing to do"), "{again}");

    let data = dir.path().join("replica");
    let seed = Script::new(scripts::POSTGRES_REPLICA_SEED);
    let data_str = data.display().to_string();
    let port_str = port.to_string();
    let seed_env = [
        ("PRIMARY_HOST", "127.0.0.1"),
        ("PRIMARY_PORT", port_str.as_str()),
        ("REPLICATION_USER", "replicator"),
        ("PGPASSWORD", PASSWORD),
        ("PGDATA", data_str.as_str()),
        ("SEED_TIMEOUT_SECONDS", "30"),
    ];
    seed.run(&[], &seed_env, Some("postgres"))
        .unwrap_or_else(|e| panic!("replica seed: {e}"));
    assert!(
        data.join("standby.signal").exists(),
        "pg_basebackup -R writes standby.signal"
    );
    let replica_port = free_port();
    let replica = server(
        "postgres-seeded-replica",
        &data_str,
        replica_port,
        dir.path(),
        "SELECT pg_is_in_recovery()",
    );

    psql(
        port,
        DATABASE,
        "CREATE TABLE seeded (v text); INSERT INTO seeded VALUES ('streamed')",
    )
    .unwrap();
    wait_until(
        "the row to stream to the seeded replica",
        Duration::from_secs(120),
        || match psql(replica_port, DATABASE, "SELECT v FROM seeded")?.as_str() {
            "streamed" => Ok(()),
            other => Err(format!("replica has {other:?}")),
        },
    );
    assert_eq!(
        psql(port, "postgres", "SELECT usename FROM pg_stat_replication"),
        Ok("replicator".into()),
        "the replica streams as the replication role"
    );
    let log = std::fs::read_to_string(dir.path().join("postgres-initialized-primary.log")).unwrap();
    assert!(
        !log.contains("does not exist"),
        "the seed's checks of the primary connect to a database that exists:\n{log}"
    );

    let again = seed.run(&[], &seed_env, Some("postgres")).unwrap();
    assert!(again.contains("nothing to do"), "{again}");
    drop(replica);
    drop(primary);
}
