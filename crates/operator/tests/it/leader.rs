//! Leader election against a real apiserver when it goes silent for one replica: the holder's
//! renewal hangs (a black-holed connection, as a paused apiserver or a partition gives) for longer
//! than the lease. The holder must stop leading before the other replica takes over: never two
//! reconcilers at once, whatever the clocks say.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postcache_operator::leader::LeaseLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::plane_with_crd;

/// A TCP relay to `upstream` that, once `silent` is set, stops passing bytes either way and
/// leaves every connection open: the other end sees no reset, only silence.
async fn relay(upstream: String, silent: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, silent) = (upstream.clone(), Arc::clone(&silent));
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pipe(client_read, server_write, Arc::clone(&silent)),
                    pipe(server_read, client_write, silent)
                );
            });
        }
    });
    port
}

/// Copies `read` to `write` until either ends; once `silent` is set, holds what it read.
async fn pipe(mut read: OwnedReadHalf, mut write: OwnedWriteHalf, silent: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if write.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_apiserver_steps_down_before_anyone_takes_over() {
    let plane = plane_with_crd();
    let ns = plane.create_namespace();
    let direct = plane.client().await;
    let upstream = plane.server_url().trim_start_matches("https://").to_owned();
    let silent = Arc::new(AtomicBool::new(false));
    let port = relay(upstream, Arc::clone(&silent)).await;
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.cluster_url = format!("https://127.0.0.1:{port}").parse().unwrap();
    let relayed = kube::Client::try_from(config).unwrap();

    let lease = Duration::from_secs(6);
    let holder = LeaseLock::new(relayed, &ns, "postcache-operator", "holder", lease);
    let candidate = LeaseLock::new(direct, &ns, "postcache-operator", "candidate", lease);
    let since = holder.acquire().await;
    let holding = tokio::spawn(async move {
        holder.hold(since).await;
        Instant::now()
    });
    // A few renewals go through, then the holder's apiserver goes silent.
    tokio::time::sleep(lease).await;
    assert!(
        !holding.is_finished(),
        "the holder lost the lease while connected"
    );
    silent.store(true, Ordering::SeqCst);
    let taking_over = tokio::spawn(async move { candidate.acquire().await });

    let stepped_down = tokio::time::timeout(4 * lease, holding)
        .await
        .expect("the cut-off holder kept leading (its renewal hangs for ever)")
        .unwrap();
    let took_over = tokio::time::timeout(4 * lease, taking_over)
        .await
        .expect("the candidate never took over an abandoned lease")
        .unwrap();
    assert!(
        stepped_down < took_over,
        "two leaders: the candidate took over {:?} before the holder stepped down",
        stepped_down - took_over
    );
}
