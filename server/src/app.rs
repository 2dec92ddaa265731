//! The application: built from a configuration (store, relying party, router, listener), then run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Request};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use webauthn_rs::prelude::WebauthnBuilder;

use crate::circle;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::routes;
use crate::signal::{LocalHub, PresenceGate};
use crate::state::AppState;
use crate::store::{SqliteStore, Store};

/// The largest request body accepted (a WebAuthn credential is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    first_invitation: Option<String>,
}

/// Why the application could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The relying party for a configuration.
///
/// # Errors
/// When the origin has no host or the host is not a valid RP id for it.
pub fn relying_party(config: &Config) -> Result<webauthn_rs::prelude::Webauthn, BuildError> {
    let rp_id = config.rp_id().map_err(BuildError::Config)?;
    let ceremony_secs = u64::try_from(config.ceremony_ttl_secs.max(1)).unwrap_or(300);
    WebauthnBuilder::new(&rp_id, &config.origin)
        .and_then(|b| {
            b.rp_name("Tessera")
                .timeout(Duration::from_secs(ceremony_secs))
                .build()
        })
        .map_err(|e| BuildError::Config(format!("origin {}: {e:?}", config.origin)))
}

impl Application {
    /// Opens the store, creates the first circle if there is none, and binds the listener.
    ///
    /// # Errors
    /// See [`BuildError`].
    pub async fn build(config: Config) -> Result<Application, BuildError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BuildError::Listen {
                    addr: config.listen,
                    source,
                })?;
        Application::build_on(config, Arc::new(Clock::default()), listener).await
    }

    /// Like [`Application::build`], on a listener the caller bound and with a clock the caller
    /// may move forward (tests bind port 0 first, so that the origin can name the port).
    ///
    /// # Errors
    /// See [`BuildError`].
    pub async fn build_on(
        config: Config,
        clock: Arc<Clock>,
        listener: TcpListener,
    ) -> Result<Application, BuildError> {
        let webauthn = relying_party(&config)?;
        let attestation = crate::attestation::admitted(&config).map_err(BuildError::Config)?;
        crate::turn::check_urls(&config.ice_urls, config.turn_secret.as_ref())
            .map_err(BuildError::Config)?;
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&config.data_dir)
                .await?
                .ceremony_capacity(config.max_pending_ceremonies),
        );
        let first_invitation = if store.circle_count().await? == 0 {
            let created =
                circle::create_circle(store.as_ref(), &config.origin_base(), clock.now()).await?;
            Some(created.url)
        } else {
            None
        };
        let state = AppState {
            store,
            webauthn: Arc::new(webauthn),
            attestation: attestation.map(Arc::new),
            clock,
            limits: Arc::new(RateLimits::new(
                config.ceremony_rate_per_minute,
                config.invitation_rate_per_minute,
            )),
            signals: Arc::new(LocalHub::default()),
            presence: Arc::new(PresenceGate::new(config.ws_presence_per_minute)),
            metrics: Arc::new(Metrics::default()),
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        Ok(Application {
            listener,
            router: router(state.clone()),
            state,
            first_invitation,
        })
    }

    /// The port the server listens on (useful with port 0).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map_or(0, |a| a.port())
    }

    /// The first circle's admin invitation link, when this start created it.
    #[must_use]
    pub fn first_invitation(&self) -> Option<&str> {
        self.first_invitation.as_deref()
    }

    /// The shared state (tests inspect the store through it).
    #[must_use]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the process is stopped (Ctrl-C or SIGTERM), purging expired rows every minute.
    pub async fn run(self) {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes; then takes no new connection, lets requests in flight
    /// finish, tells every signalling connection goodbye (a WebSocket close) and waits at most
    /// [`crate::listener::SHUTDOWN_GRACE`] for them.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) {
        tokio::task::spawn_blocking(crate::routes::assets::warm_up);
        let state = self.state.clone();
        let janitor = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(error) = state.store.purge_expired(state.clock.now()).await {
                    tracing::warn!(%error, "purging expired rows failed");
                }
                state.limits.shrink();
                state.presence.shrink();
            }
        });
        let shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            stop.await;
            shutdown.cancel();
        });
        let read_timeout = Duration::from_secs(self.state.config.read_timeout_secs);
        crate::listener::serve(
            self.listener,
            self.router,
            read_timeout,
            self.state.shutdown.clone(),
            self.state.connections.clone(),
        )
        .await;
        janitor.abort();
    }
}

/// Ctrl-C or SIGTERM (what systemd and container runtimes send).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// The whole HTTP surface, with the headers every response carries and request logging that names
/// only the route template (never the path, which may hold a token) and never the client address.
pub fn router(state: AppState) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str);
        tracing::info_span!("http", method = %request.method(), route)
    });
    let body_timeout = Duration::from_secs(state.config.read_timeout_secs);
    routes::router()
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(trace)
        .layer(SetResponseHeaderLayer::overriding(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}
