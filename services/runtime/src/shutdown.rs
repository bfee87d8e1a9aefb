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

/// Runs `pass` every `interval` (a pass that overruns delays the next tick, never stacks) until
/// `stop` resolves — also in the middle of a pass, so `pass` must be safe to abandon between
/// its awaits (each step committed on its own, the next pass goes on where it stopped). A failed
/// pass is logged as `what` and retried on the next tick.
pub async fn every<F, Fut, T, E>(
    interval: std::time::Duration,
    what: &'static str,
    stop: impl std::future::Future<Output = ()>,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = &mut stop => return,
            result = pass() => {
                if let Err(error) = result {
                    tracing::warn!(%error, "{what} failed; retrying next pass");
                }
            }
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

    #[tokio::test]
    async fn every_repeats_passes_after_failures_and_stops_in_the_middle_of_one() {
        let passes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let passes = passes.clone();
            every(
                Duration::from_millis(10),
                "probe",
                async move {
                    let _ = rx.await;
                },
                move || {
                    let n = passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if n < 3 {
                            Err("failing")
                        } else {
                            // The fourth pass never ends by itself.
                            std::future::pending::<Result<(), &str>>().await
                        }
                    }
                },
            )
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while passes.load(std::sync::atomic::Ordering::SeqCst) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "failed passes are retried"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a pass in progress does not hold up the stop")
            .unwrap();
    }
}
