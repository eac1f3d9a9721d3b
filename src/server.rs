//! Wiring: store, provider, fleet, API and background loops.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::api::{router, AppState};
use crate::auth::{ensure_admin_token, Authenticator};
use crate::config::Config;
use crate::fleet::{build_provider, tokio_util_shutdown::Shutdown, Clock, Fleet, SystemClock};
use crate::store::Store;

/// A running in-process fleet: its API router and the handles to stop it.
pub struct Running {
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// API state (for building routers in tests).
    pub state: AppState,
    /// Stops the loops.
    pub shutdown: Shutdown,
    /// The job pipeline.
    pub jobs: Arc<crate::jobs::Jobs>,
}

/// Opens the store, builds the provider and the fleet, makes sure there is an admin token for
/// the embedded default, and starts the reconcile loop and the config watcher.
///
/// # Errors
/// When the data directory, database or provider cannot be set up.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<Running> {
    start_with_clock(config, config_path, Arc::new(SystemClock)).await
}

/// [`start`] with the fleet's time from `clock` (a [`crate::fleet::ManualClock`] in tests).
///
/// # Errors
/// As [`start`].
pub async fn start_with_clock(
    config: Config,
    config_path: Option<PathBuf>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let url = config.database_url();
    let store = open_store(&url, config.database.max_connections).await?;
    if config.database.url.is_none() && ensure_admin_token(&store, &config.admin_token_path()).await? {
        info!(path = %config.admin_token_path().display(), "generated the admin token");
    }
    let provider = build_provider(&config).await?;
    let auth = Authenticator::new(&config.auth.tokens, store.clone());
    let fleet = Fleet::with_clock(config, store, provider, clock).await?;
    fleet.reload_policies().map_err(|e| anyhow::anyhow!("policies: {e}"))?;
    let key = fleet.config.secrets.key.as_ref().map(|k| k.0.as_str());
    let secrets =
        crate::secrets::Secrets::load(fleet.store.clone(), &fleet.install_id, key, &fleet.config.secrets_key_path())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = Shutdown::default();
    tokio::spawn(fleet.clone().run(shutdown.clone()));
    if let Some(dir) = fleet.config.policies_dir.clone() {
        tokio::spawn(watch_policies(fleet.clone(), dir, shutdown.clone()));
    }
    let config_error = Arc::new(RwLock::new(None));
    if let Some(path) = config_path {
        tokio::spawn(watch_config(path, config_error.clone(), shutdown.clone()));
    }
    let objects = fleet.config.object_store().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(kind = objects.kind(), "object store");
    let jobs = crate::jobs::Jobs::new(fleet.clone(), secrets, objects);
    tokio::spawn(jobs.clone().run(shutdown.clone()));
    let state = AppState { fleet: fleet.clone(), auth, config_error, jobs: jobs.clone() };
    Ok(Running { fleet, state, shutdown, jobs })
}

/// Opens the store, retrying with jittered exponential backoff for about a minute while the
/// database is unreachable (it may still be starting beside us); bad URLs and failed
/// migrations are not retried.
async fn open_store(url: &str, max_connections: u32) -> anyhow::Result<Store> {
    use backon::{ExponentialBuilder, Retryable};
    let policy = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(10)
        .with_jitter();
    (|| Store::open(url, max_connections))
        .retry(policy)
        .when(|e| matches!(e, crate::store::StoreError::Db(_)))
        .notify(|e, wait| warn!(error = %e, ?wait, "database not reachable yet; retrying"))
        .await
        .with_context(|| format!("opening database {}", crate::store::redact_url(url)))
}

/// Re-validates the config file every few seconds, so `/status` reports a file that an
/// operator broke while the service keeps running on the last good one.
async fn watch_config(path: PathBuf, slot: Arc<RwLock<Option<String>>>, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let verdict = Config::load(Some(&path), std::env::vars()).err().map(|e| format!("configuration: {e}"));
        *slot.write().unwrap_or_else(|p| p.into_inner()) = verdict;
    }
}

/// Runs `vmfleet serve` until SIGINT or SIGTERM.
///
/// # Errors
/// Set-up or bind failures.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let listen = config.listen;
    let running = start(config, config_path).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    info!(%listen, install_id = %running.fleet.install_id, provider = running.fleet.provider.kind(),
          database = running.fleet.store.backend(), "serving");
    let shutdown = running.shutdown.clone();
    let app = router(running.state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "no SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    shutdown.trigger();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shutdown.trigger();
        })
        .await?;
    Ok(())
}

/// Reloads the policy files when they change (checked every 2 s); a set that does not validate
/// is refused whole and the policies in force stay.
async fn watch_policies(fleet: Arc<Fleet>, dir: PathBuf, shutdown: Shutdown) {
    let mut seen = crate::policy::fingerprint(&dir);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let now = crate::policy::fingerprint(&dir);
        if now != seen {
            seen = now;
            let _ = fleet.reload_policies();
        }
    }
}
