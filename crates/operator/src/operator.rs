//! The `postcache operator` process: the metrics server, the leader-election loop around the
//! controller (reconcile only while holding the Lease, stop when it is lost), and graceful
//! shutdown that releases the Lease.

use kube::Client;

use crate::config::OperatorArgs;
use crate::controller::{Context, run_controller};
use crate::scripts::Scripts;
use crate::{leader, metrics};

/// `postcache operator`: serves metrics, waits for the Lease (when leader election is on), runs
/// the controller while it holds it, and on `shutdown` stops and releases the Lease.
///
/// # Errors
/// When no client can be configured or the metrics address cannot be bound.
pub async fn run(
    args: OperatorArgs,
    scripts: Scripts,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = Client::try_default().await?;
    let handle = metrics::install()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut metrics_stop = stop_rx.clone();
    let listener = metrics::serve(args.metrics_addr, handle, async move {
        let _ = metrics_stop.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(listener);
    let identity = args.identity();
    let ctx = Context::new(client.clone(), args.images(), scripts, &identity);
    let lock = leader::LeaseLock::new(
        client,
        &args.lease_namespace(),
        &args.lease_name,
        &identity,
        args.lease_duration(),
    );
    let watch_namespace = args.watch_namespace().map(str::to_owned);
    tokio::pin!(shutdown);
    loop {
        let mut since = std::time::Instant::now();
        if args.leader_election {
            tracing::info!(identity = %identity, "waiting for the lease");
            tokio::select! {
                won = lock.acquire() => since = won,
                () = &mut shutdown => break,
            }
        }
        tracing::info!(identity = %identity, "leading: reconciling");
        ::metrics::gauge!(metrics::LEADER).set(1.0);
        let lost = async {
            if args.leader_election {
                lock.hold(since).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = run_controller(ctx.clone(), watch_namespace.as_deref()) => {}
            () = lost => {
                ::metrics::gauge!(metrics::LEADER).set(0.0);
                tracing::warn!("lost the lease: reconciling stopped");
                continue;
            }
            () = &mut shutdown => break,
        }
    }
    ::metrics::gauge!(metrics::LEADER).set(0.0);
    if args.leader_election
        && let Err(e) = lock.release().await
    {
        tracing::warn!(error = %e, "releasing the lease failed");
    }
    let _ = stop_tx.send(true);
    server.await??;
    tracing::info!("operator stopped");
    Ok(())
}
