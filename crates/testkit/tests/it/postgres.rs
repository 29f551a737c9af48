use std::time::Duration;

use postcache_testkit::Postgres;
use sqlx::PgPool;

use crate::eventually;

#[tokio::test]
async fn a_row_committed_on_the_primary_appears_on_the_replica() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let primary = PgPool::connect(&pg.primary_url(&db)).await.unwrap();
    let replica = PgPool::connect(&pg.replica_urls(&db)[0]).await.unwrap();

    sqlx::query("CREATE TABLE smoke (id int PRIMARY KEY, note text)")
        .execute(&primary)
        .await
        .unwrap();
    sqlx::query("INSERT INTO smoke VALUES (1, 'from the primary')")
        .execute(&primary)
        .await
        .unwrap();

    let note: String = eventually(
        "the row on the replica",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar("SELECT note FROM smoke WHERE id = 1")
                .fetch_optional(&replica)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(note, "from the primary");

    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&replica)
        .await
        .unwrap();
    assert!(in_recovery, "the replica is a hot standby");
    let write = sqlx::query("INSERT INTO smoke VALUES (2, 'x')")
        .execute(&replica)
        .await;
    assert!(
        write.unwrap_err().to_string().contains("read-only"),
        "a standby refuses writes"
    );
}

#[tokio::test]
async fn pausing_replay_makes_the_replica_lag_and_resuming_catches_up() {
    let pg = Postgres::shared();
    let db = pg.create_database();
    let primary = PgPool::connect(&pg.primary_url(&db)).await.unwrap();
    let replica = PgPool::connect(&pg.replica_urls(&db)[0]).await.unwrap();
    sqlx::query("CREATE TABLE lag (id int)")
        .execute(&primary)
        .await
        .unwrap();
    eventually(
        "the table on the replica",
        Duration::from_secs(30),
        || async {
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_tables WHERE tablename = 'lag'")
                    .fetch_optional(&replica)
                    .await
                    .map_err(|e| e.to_string())?;
            Ok(found)
        },
    )
    .await;

    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    let paused = crate::poll_async(Duration::from_secs(10), || async {
        let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
            .fetch_one(&replica)
            .await
            .map_err(|e| e.to_string())?;
        Ok((state == "paused").then_some(()))
    })
    .await;
    sqlx::query("INSERT INTO lag VALUES (1)")
        .execute(&primary)
        .await
        .unwrap();
    let seen_while_paused: i64 = sqlx::query_scalar("SELECT count(*) FROM lag")
        .fetch_one(&replica)
        .await
        .unwrap();
    // Resume before asserting: the replica is shared with the other tests of this binary.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    paused.expect("replay pauses");
    assert_eq!(
        seen_while_paused, 0,
        "a paused replica does not see the new row"
    );

    eventually(
        "the replica to catch up",
        Duration::from_secs(30),
        || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM lag")
                .fetch_one(&replica)
                .await
                .map_err(|e| e.to_string())?;
            Ok((count == 1).then_some(()))
        },
    )
    .await;
}
