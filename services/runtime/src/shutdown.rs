//! Shutdown as a future: SIGTERM or ctrl-c.

/// Resolves on SIGTERM or ctrl-c.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "ctrl-c", "shutdown requested"),
        () = term => tracing::info!(signal = "sigterm", "shutdown requested"),
    }
}

/// The last step of a stop, graceful or not: request shutdown (the service's main loop may have
/// ended on its own, e.g. its message stream closed, and its servers and background tasks must
/// not keep the process alive), flush what NATS still buffers (acks, publishes), then wait for
/// the service's servers.
pub async fn drain(
    shutdown: &Shutdown,
    nats: Option<&async_nats::Client>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> std::io::Result<()> {
    shutdown.request();
    if let Some(client) = nats {
        if let Err(error) = client.flush().await {
            tracing::warn!(%error, "nats flush on shutdown failed");
        }
    }
    for server in servers {
        match server.await {
            Ok(result) => result?,
            Err(error) => tracing::error!(%error, "server task failed"),
        }
    }
    Ok(())
}

/// Fans one shutdown future out to every task that needs it.
#[derive(Clone)]
pub struct Shutdown {
    tx: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    /// Spawns a task that waits for `signal` and then notifies every subscriber.
    pub fn new(signal: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tx = std::sync::Arc::new(tx);
        tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::select! {
                    () = signal => { tx.send_replace(true); }
                    () = tx.closed() => {}
                }
            }
        });
        Self { tx, rx }
    }

    /// Requests shutdown without a signal.
    pub fn request(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once shutdown was requested.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means every sender is gone, which only happens after shutdown was
            // requested or when nobody can request it any more.
            let _ = rx.wait_for(|requested| *requested).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn drain_stops_servers_when_the_main_loop_ended_without_a_signal() {
        let shutdown = Shutdown::new(std::future::pending());
        let server = tokio::spawn({
            let stop = shutdown.wait();
            async move {
                stop.await;
                Ok(())
            }
        });
        let drained =
            tokio::time::timeout(Duration::from_secs(5), drain(&shutdown, None, vec![server]))
                .await;
        assert!(matches!(drained, Ok(Ok(()))), "drain returned");
    }

    #[tokio::test]
    async fn the_signal_reaches_every_waiter() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::new(async move {
            let _ = rx.await;
        });
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(shutdown.wait())).collect();
        tx.send(()).unwrap();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
    }
}
