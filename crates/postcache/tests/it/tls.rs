//! TLS to the backends: PostgreSQL with `sslmode=verify-full` and a private CA (`sslrootcert`),
//! Redis over `rediss://` with `POSTCACHE_REDIS_CA_FILE` (L2 and the event log); a server whose certificate the pod
//! cannot verify is refused, never used in the clear.

use postcache_testkit::{Postgres, Redis, free_port};

use crate::tiers::Pods;
use crate::{serve, stderr_of, wait_exit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_verified_tls_and_an_unverifiable_server_refused() {
    let pg = Postgres::start_tls(0);
    let db = pg.create_database();
    let ca = pg.ca_file().display().to_string();
    let verified = format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        pg.primary_url(&db)
    );
    let pods = Pods::start(1, &[("POSTCACHE_DATABASE_URL", verified.as_str())]);
    let (id, _) = pods.create(0, "ann", "over tls").await;
    let (version, _) = pods.read(0, &id, None).await;
    assert_eq!(version, 1);
    let encrypted = pg
        .psql_primary(
            &db,
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'postcache'",
        )
        .unwrap();
    assert_eq!(encrypted, "t", "every session of the pod is encrypted");

    // The public roots do not know the test CA: verify-full without it must refuse.
    let unverifiable = format!("{}?sslmode=verify-full", pg.primary_url(&db));
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = serve(
        dir.path(),
        &[
            ("POSTCACHE_LISTEN", listen.as_str()),
            ("POSTCACHE_DATABASE_URL", unverifiable.as_str()),
            ("POSTCACHE_DB_CONNECT_TIMEOUT_SECONDS", "2"),
        ],
    );
    let status = wait_exit(&mut child);
    let log = stderr_of(dir.path());
    assert!(
        !status.success(),
        "connected to an unverifiable server:\n{log}"
    );
    assert!(
        log.to_lowercase().contains("certificate"),
        "the log does not say why:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_carries_the_shared_tiers_between_pods() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let database = pg.primary_url(&db);
    let redis = Redis::start_tls();
    let (url, ca) = (redis.tls_url(), redis.ca_file().display().to_string());
    let pods = Pods::start(
        2,
        &[
            ("POSTCACHE_DATABASE_URL", database.as_str()),
            ("POSTCACHE_REDIS_URL", url.as_str()),
            ("POSTCACHE_REDIS_CA_FILE", ca.as_str()),
        ],
    );
    // Both hear the event log's heartbeat (over TLS) before they answer from the caches.
    for i in 0..2 {
        pods.wait_metric(i, "postcache_l1_distrusted", 0.0).await;
    }
    let (id, _) = pods.create(0, "ann", "through rediss").await;
    // From its memory (the event log delivered the post) or from L2: either way through Redis.
    let (version, tier) = pods.read(1, &id, None).await;
    assert_eq!(version, 1);
    assert_ne!(
        tier,
        "l3",
        "the other pod had the post from Redis over TLS\n{}",
        pods.log(1)
    );
    assert_eq!(
        pods.metric(0, "postcache_degraded{component=\"redis\"}")
            .await,
        Some(0.0),
        "{}",
        pods.log(0)
    );

    // Without the CA the handshake fails: Redis is degraded, writes still commit.
    let untrusting = Pods::start(
        1,
        &[
            ("POSTCACHE_DATABASE_URL", database.as_str()),
            ("POSTCACHE_REDIS_URL", url.as_str()),
        ],
    );
    untrusting.create(0, "ann", "redis refused").await;
    untrusting
        .wait_metric(0, "postcache_degraded{component=\"redis\"}", 1.0)
        .await;
}
