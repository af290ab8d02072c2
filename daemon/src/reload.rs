//! Live reloads of a running daemon: SIGHUP and `plinthctl config reload` (the config
//! service, `plinth.services.config.v1.Config`) read the config again as a start would
//! (files, imports, the same command-line flags, plugin libraries, strict mode), plan what
//! changes against the running plugins, and apply the plan all or nothing
//! ([`plinth_core::reload`]). The gRPC services of the new generation are swapped in behind
//! the live socket ([`RouteTable`]): calls in flight finish on the instances they started
//! on, new calls reach the new ones, and the replaced instances are closed once the calls
//! holding them have finished (at most the drain time-out later).

use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use plinth_api::plinth::services::config::v1::config_server::{Config as ConfigApi, ConfigServer};
use plinth_api::plinth::services::config::v1::{
    GenerationRequest, GenerationResponse, ReloadRequest, ReloadResponse, Step as StepMessage,
};
use plinth_builtin_plugins::grpc::{GrpcService, MessageLimits};
use plinth_builtin_plugins::live::AfterStart;
use plinth_core::config::ResolvedConfig;
use plinth_core::registry::Source;
use plinth_core::reload::{Generation, Plan, plan, stage};
use plinth_core::{InitOptions, Registry, Set, Status, types};
use tonic::service::Routes;

use crate::setup::{Options, Prepared};

/// The gRPC routes the server dispatches to, swapped whole by a reload. Each call takes the
/// routes current when it arrives and keeps them until it has finished.
#[derive(Clone)]
pub struct RouteTable {
    current: Arc<RwLock<Routes>>,
}

impl RouteTable {
    /// A table serving `routes`.
    pub fn new(routes: Routes) -> RouteTable {
        RouteTable {
            current: Arc::new(RwLock::new(routes.prepare())),
        }
    }

    /// Serves `routes` from now on; calls in flight keep the routes they started with.
    pub fn swap(&self, routes: Routes) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = routes.prepare();
    }

    /// The routes for the server: every call is dispatched to the table's current routes.
    pub fn routes(&self) -> Routes {
        Routes::from(axum::Router::new().fallback_service(self.clone()))
    }
}

impl tower::Service<axum::extract::Request> for RouteTable {
    type Response = axum::response::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = <Routes as tower::Service<axum::extract::Request>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Routes are always ready (axum's router is).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let mut routes = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tower::Service::call(&mut routes, request)
    }
}

/// The routes of every ok gRPC plugin in `plugins`, with `limits`, and the config service;
/// the ids of the plugins served.
pub fn build_routes(
    plugins: &Set,
    limits: MessageLimits,
    reloader: Option<&Arc<Reloader>>,
) -> (Routes, Vec<&'static str>) {
    let mut routes = tonic::service::RoutesBuilder::default();
    let mut served = Vec::new();
    for plugin in plugins.plugins() {
        if plugin.plugin_type() != types::GRPC || !matches!(plugin.status(), Status::Ok) {
            continue;
        }
        match plugin.instance::<dyn GrpcService>() {
            Ok(service) => {
                service.register(&mut routes, limits);
                served.push(plugin.id());
            }
            Err(e) => tracing::warn!(uri = plugin.uri(), error = %e, "not a gRPC service"),
        }
    }
    if let Some(reloader) = reloader {
        routes.add_service(ConfigServer::from_arc(reloader.clone()));
    }
    (routes.routes(), served)
}

/// The message limits of a config's `[grpc]`.
pub fn limits(config: &ResolvedConfig) -> MessageLimits {
    MessageLimits {
        max_recv: usize::try_from(config.config.grpc.max_recv_message_size).unwrap_or(usize::MAX),
        max_send: usize::try_from(config.config.grpc.max_send_message_size).unwrap_or(usize::MAX),
    }
}

/// The init settings of a config: what a start and every reload initialise plugins with.
pub fn init_options(config: &ResolvedConfig, grpc_address: &str) -> InitOptions {
    let (timeouts, default_timeout) = config.init_timeouts();
    let mut extensions = plinth_core::init::Extensions::new();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        extensions.insert(handle);
    }
    InitOptions {
        root: config.config.root.clone(),
        state: config.config.state.clone(),
        grpc_address: grpc_address.to_string(),
        required: config.config.required_plugins.clone(),
        configs: config.plugin_configs.clone(),
        watchdog: config.init_watchdog(),
        timeouts,
        default_timeout,
        extensions,
    }
}

/// What the daemon runs on: the registry and config of the live generation.
struct Running {
    registry: Registry,
    config: ResolvedConfig,
}

/// `next`, with the plugins of libraries that are gone from the plugin directory: they stay
/// loaded and running (libraries are never unloaded), so the next reload plans with them.
fn keep_loaded(running: &Registry, next: Registry) -> Registry {
    let gone: Vec<&plinth_core::registry::Entry> = running
        .entries()
        .iter()
        .filter(|e| matches!(e.source, Source::Dynamic { .. }) && next.get(&e.uri()).is_none())
        .collect();
    if gone.is_empty() {
        return next;
    }
    let mut builder = Registry::builder();
    for entry in next.entries().iter().chain(gone) {
        builder = match &entry.source {
            Source::Static => builder.add_static(entry.registration),
            Source::Dynamic { library } => builder.add_dynamic(library.clone(), entry.registration),
            Source::Proxy { name } => builder.add_proxy(name.clone(), entry.registration),
        };
    }
    // Both were valid registries with these plugins apart; together they cannot clash.
    builder.build().unwrap_or(next)
}

/// The result of one reload.
#[derive(Debug)]
pub struct Outcome {
    /// What the new config changes.
    pub plan: Plan,
    /// Whether it was applied.
    pub applied: bool,
    /// The generation running now.
    pub generation: u64,
    /// From the start of the reload to the new generation serving.
    pub serving_after: Duration,
    /// How long the retired instances took to drain and close after that.
    pub retired_after: Duration,
    /// Retired plugins still held by a call when the drain time ran out.
    pub still_in_use: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config does not load or is not startable.
    #[error("the new config was not applied, nothing changed: {0:#}")]
    Config(anyhow::Error),
    /// The plan was refused (a setting that needs a restart, a cycle).
    #[error(transparent)]
    Refused(#[from] plinth_core::reload::PlanError),
    /// A step failed.
    #[error(transparent)]
    Failed(#[from] plinth_core::reload::ApplyError),
}

/// What the host does after each applied reload, with the live set and the new message
/// limits, beyond swapping the main routes (plinthd: serve its proxy targets' new services).
pub type AfterCommit =
    Box<dyn Fn(&Set, MessageLimits) -> anyhow::Result<()> + Send + Sync + 'static>;

/// Carries out reloads of one daemon, one at a time.
pub struct Reloader {
    options: Options,
    grpc_address: String,
    live: Set,
    table: RouteTable,
    drain: Duration,
    running: tokio::sync::Mutex<Running>,
    after_commit: std::sync::OnceLock<AfterCommit>,
    /// Set once the daemon stops: no reload starts after it.
    stopping: std::sync::atomic::AtomicBool,
    /// Reloads finished, whatever their outcome.
    finished: std::sync::atomic::AtomicU64,
    /// Itself, for the routes it rebuilds (which serve the config service too).
    this: std::sync::Weak<Reloader>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.live.generation())
            .finish()
    }
}

impl Reloader {
    /// A reloader for the daemon started with `options` from `prepared`, serving `live`
    /// through `table`; replaced instances get `drain` to finish their calls.
    pub fn new(
        prepared: Prepared,
        grpc_address: String,
        live: Set,
        table: RouteTable,
        drain: Duration,
    ) -> Arc<Reloader> {
        Arc::new_cyclic(|this| Reloader {
            options: prepared.options,
            grpc_address,
            live,
            table,
            drain,
            running: tokio::sync::Mutex::new(Running {
                registry: prepared.registry,
                config: prepared.config,
            }),
            finished: std::sync::atomic::AtomicU64::new(0),
            after_commit: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            this: this.clone(),
        })
    }

    /// Refuses reloads from now on and waits for the one under way, if any, to finish (its
    /// retired instances closed): the daemon is stopping.
    pub async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _running = self.running.lock().await;
    }

    /// Sets the work done after each applied reload (once; a second hook is ignored).
    pub fn after_commit(&self, hook: AfterCommit) {
        let _ = self.after_commit.set(hook);
    }

    /// Reads the config again, plans, and (unless `dry_run`) applies the plan.
    ///
    /// # Errors
    /// The new config does not load, the plan is refused, or a step failed; the running
    /// plugins are then exactly as they were.
    pub async fn reload(&self, dry_run: bool) -> Result<Outcome, ReloadError> {
        /// Counts the reload as finished however it ends.
        struct Finished<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let started = Instant::now();
        let mut running = self.running.lock().await;
        let _finished = Finished(&self.finished);
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ReloadError::Config(anyhow::anyhow!(
                "the daemon is stopping; start it again to apply the config"
            )));
        }
        let options = self.options.clone();
        let next = tokio::task::spawn_blocking(move || {
            let prepared = crate::setup::prepare(&options)?;
            crate::setup::check_startable(&prepared)?;
            Ok::<_, anyhow::Error>(prepared)
        })
        .await
        .map_err(|e| ReloadError::Config(e.into()))?
        .map_err(ReloadError::Config)?;
        for diagnostic in &next.config.diagnostics {
            tracing::warn!("config: {diagnostic}");
        }
        let mut plan = plan(
            &Generation::new(&running.registry, &running.config.config),
            &Generation::new(&next.registry, &next.config.config),
        )?;
        if running.config.config.debug != next.config.config.debug {
            plan.add_note(
                "[debug] (log level and format) takes effect at the next start of the daemon"
                    .to_string(),
            );
        }
        let outcome = |plan: Plan, applied: bool| Outcome {
            plan,
            applied,
            generation: self.live.generation(),
            serving_after: started.elapsed(),
            retired_after: Duration::ZERO,
            still_in_use: Vec::new(),
        };
        if dry_run {
            return Ok(outcome(plan, false));
        }
        if plan.is_empty() {
            // Nothing to apply; what changed (comments, timeouts) is the config from now on.
            *running = Running {
                registry: keep_loaded(&running.registry, next.registry),
                config: next.config,
            };
            return Ok(outcome(plan, false));
        }
        let _ = crate::notify::reloading();
        let steps: Vec<String> = plan.steps().iter().map(ToString::to_string).collect();
        tracing::info!(plan = %steps.join("; "), "reloading");
        let live = self.live.clone();
        let staging_plan = plan.clone();
        let init = init_options(&next.config, &self.grpc_address);
        let staged = tokio::task::spawn_blocking(move || stage(&live, &staging_plan, init))
            .await
            .map_err(|e| ReloadError::Config(e.into()));
        let staged = match staged {
            Ok(Ok(staged)) => staged,
            Ok(Err(error)) => {
                let _ = crate::notify::notify("READY=1");
                tracing::warn!(%error, "reload refused");
                return Err(error.into());
            }
            Err(error) => {
                let _ = crate::notify::notify("READY=1");
                return Err(error);
            }
        };
        let built: Vec<_> = staged.built().to_vec();
        let retired = staged.commit();
        let limits = limits(&next.config);
        let (routes, _) = build_routes(&self.live, limits, self.this.upgrade().as_ref());
        self.table.swap(routes);
        if let Some(hook) = self.after_commit.get()
            && let Err(error) = hook(&self.live, limits)
        {
            // The new generation serves; only this part of it could not be started.
            tracing::error!(error = %format!("{error:#}"), "after applying the reload");
        }
        let serving_after = started.elapsed();
        let _ = crate::notify::notify("READY=1");
        for plugin in &built {
            if let Ok(work) = plugin.instance::<dyn AfterStart>() {
                work.after_start();
            }
        }
        let drain = self.drain;
        let closed = tokio::task::spawn_blocking(move || retired.close(drain))
            .await
            .unwrap_or_default();
        for (uri, error) in &closed.failures {
            tracing::warn!(uri, %error, "closing a replaced plugin failed");
        }
        *running = Running {
            registry: keep_loaded(&running.registry, next.registry),
            config: next.config,
        };
        let outcome = Outcome {
            generation: self.live.generation(),
            serving_after,
            retired_after: started.elapsed().saturating_sub(serving_after),
            still_in_use: closed.still_in_use,
            ..outcome(plan, true)
        };
        tracing::info!(
            generation = outcome.generation,
            steps = outcome.plan.steps().len(),
            serving_after = ?outcome.serving_after,
            retired_after = ?outcome.retired_after,
            "config reloaded"
        );
        Ok(outcome)
    }

    /// Reloads on SIGHUP until the daemon stops; each outcome goes to the log.
    pub async fn on_sighup(self: Arc<Self>, mut hangup: tokio::signal::unix::Signal) {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            match self.reload(false).await {
                Ok(outcome) if !outcome.applied => {
                    let notes = outcome.plan.notes().join("; ");
                    tracing::info!(generation = outcome.generation, %notes, "config reload: nothing to apply");
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "reload failed"),
            }
        }
    }
}

#[tonic::async_trait]
impl ConfigApi for Reloader {
    async fn reload(
        &self,
        request: tonic::Request<ReloadRequest>,
    ) -> Result<tonic::Response<ReloadResponse>, tonic::Status> {
        let outcome = Reloader::reload(self, request.get_ref().dry_run)
            .await
            .inspect_err(|error| tracing::warn!(%error, "reload (config service) changed nothing"))
            .map_err(|error| match &error {
                ReloadError::Config(_) => tonic::Status::invalid_argument(error.to_string()),
                _ => tonic::Status::failed_precondition(error.to_string()),
            })?;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(tonic::Response::new(ReloadResponse {
            steps: outcome
                .plan
                .steps()
                .iter()
                .map(|step| StepMessage {
                    uri: step.uri.clone(),
                    action: step.action.to_string(),
                    reasons: step.reasons.clone(),
                })
                .collect(),
            notes: outcome.plan.notes().to_vec(),
            applied: outcome.applied,
            generation: outcome.generation,
            serving_after_us: micros(outcome.serving_after),
            retired_after_us: micros(outcome.retired_after),
            still_in_use: outcome.still_in_use,
        }))
    }

    async fn generation(
        &self,
        _: tonic::Request<GenerationRequest>,
    ) -> Result<tonic::Response<GenerationResponse>, tonic::Status> {
        Ok(tonic::Response::new(GenerationResponse {
            generation: self.live.generation(),
            applied_at: Some(prost_types::Timestamp::from(self.live.applied_at())),
            reloads: self.finished.load(std::sync::atomic::Ordering::SeqCst),
        }))
    }
}
