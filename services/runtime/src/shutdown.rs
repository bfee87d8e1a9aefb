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

/// The last step of a graceful stop: flush what NATS still buffers (acks, publishes), then wait
/// for the service's servers, which stop on the same shutdown signal.
pub async fn drain(
    nats: Option<&async_nats::Client>,
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> std::io::Result<()> {
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
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Shutdown {
    /// Spawns a task that waits for `signal` and then notifies every subscriber.
    pub fn new(signal: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                () = signal => { let _ = tx.send(true); }
                () = tx.closed() => {}
            }
        });
        Self { rx }
    }

    /// Resolves once shutdown was requested.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the sender is gone, which only happens after it sent.
            let _ = rx.wait_for(|requested| *requested).await;
        }
    }
}
