use std::collections::HashSet;

use postcache_testkit::{Redis, RedisCluster, unique_name};
use redis::AsyncCommands;

#[tokio::test]
async fn standalone_redis_stores_and_forgets_on_kill() {
    let server = Redis::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:greeting", unique_name("smoke"));
    let _: () = conn.set(&key, "hello").await.unwrap();
    let value: String = conn.get(&key).await.unwrap();
    assert_eq!(value, "hello");

    // A killed cache node comes back empty: nothing is persisted.
    server.process().restart();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let value: Option<String> = conn.get(&key).await.unwrap();
    assert_eq!(value, None);
}

/// One key for each of the 16384 slots, found with the server's own CLUSTER KEYSLOT.
async fn one_key_per_slot(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut keys = vec![String::new(); 16384];
    let mut covered = 0;
    let mut i = 0u64;
    let prefix = unique_name("slot");
    while covered < keys.len() {
        let batch: Vec<String> = (i..i + 2000).map(|n| format!("{prefix}:{n}")).collect();
        i += 2000;
        let mut pipe = redis::pipe();
        for key in &batch {
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key);
        }
        let slots: Vec<usize> = pipe.query_async(conn).await.unwrap();
        for (key, slot) in batch.into_iter().zip(slots) {
            if keys[slot].is_empty() {
                keys[slot] = key;
                covered += 1;
            }
        }
    }
    keys
}

#[tokio::test]
async fn every_slot_of_the_cluster_stores_and_serves() {
    let cluster = RedisCluster::shared();
    let urls = cluster.urls();
    let mut single = redis::Client::open(urls[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = one_key_per_slot(&mut single).await;

    let client = redis::cluster::ClusterClient::new(urls).unwrap();
    let conn = client.get_async_connection().await.unwrap();
    let mut writes = tokio::task::JoinSet::new();
    for chunk in keys.chunks(1024) {
        let (mut conn, chunk) = (conn.clone(), chunk.to_vec());
        writes.spawn(async move {
            for key in chunk {
                conn.set::<_, _, ()>(&key, &key).await.unwrap();
                let back: String = conn.get(&key).await.unwrap();
                assert_eq!(back, key);
            }
        });
    }
    writes.join_all().await;

    // The keys really are spread: every master holds some of them.
    let mut masters = HashSet::new();
    for i in 0..RedisCluster::SHARDS * 2 {
        let role = cluster.cli(i, &["role"]).unwrap();
        if role.starts_with("master") {
            let size: u64 = cluster.cli(i, &["dbsize"]).unwrap().parse().unwrap();
            assert!(
                size > 4000,
                "node {i} holds {size} keys, expected about a third of 16384"
            );
            masters.insert(i);
        }
    }
    assert_eq!(masters.len(), RedisCluster::SHARDS);
}
