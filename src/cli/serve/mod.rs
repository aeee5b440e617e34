//! `smelt serve`: an OpenAI-compatible HTTP server over the batch engine. One engine thread
//! owns the model ([`engine`]); HTTP requests (tokio + axum) join its continuous batch
//! between steps and get their tokens back on a channel each.

mod engine;
mod errors;
mod handlers;
mod metrics;
mod protocol;
mod reasoning;
mod responses;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use smelt::models::batch::BatchOptions;
use smelt::models::{SamplingParams, Tokenizer};
use smelt::{ModelOptions, Needs};
use tokio::sync::{Notify, Semaphore};

use self::errors::ApiError;
use self::metrics::Metrics;
use super::generate::BackendArgs;

/// How long in-flight requests may run after SIGINT/SIGTERM before they are cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory with a tokenizer.json (and a chat template for
    /// /v1/chat/completions).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0: any free port (the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[command(flatten)]
    backend: BackendArgs,
    /// The model's name in the API (`model` of requests and /v1/models) [default: --model as given].
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences running at once, at most 4096 [default: 64].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=super::MAX_BATCH))]
    max_batch: Option<usize>,
    /// The KV cache's size, shared by all sequences (e.g. 512MiB, 2GiB) [default: 1GiB].
    #[arg(long, value_parser = super::batch::parse_size)]
    kv_memory: Option<usize>,
    /// Tokens computed per step across all sequences [default: 2048].
    #[arg(long, value_parser = super::at_least_one())]
    max_step_tokens: Option<usize>,
    /// Sequences that may wait for a place in the batch; a request beyond that (and
    /// --max-batch running) is answered 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Require `Authorization: Bearer KEY` on /v1/ endpoints (401 without it).
    #[arg(long)]
    api_key: Option<String>,
    /// Return the text inside <think>…</think> as `reasoning_content`.
    #[arg(long, value_enum)]
    reasoning_parser: Option<ReasoningParser>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReasoningParser {
    Qwen3,
}

/// What the HTTP side knows of the model.
pub struct ServerInfo {
    pub name: String,
    pub context: usize,
    pub vocab: usize,
    pub sampling_defaults: Option<SamplingParams>,
    pub tokenizer: Tokenizer,
}

pub struct AppState {
    info: Arc<ServerInfo>,
    engine: mpsc::Sender<engine::Command>,
    metrics: Arc<Metrics>,
    /// One permit per sequence running or waiting: none left is a 429.
    admission: Arc<Semaphore>,
    capacity: usize,
    next_seq: AtomicUsize,
    reasoning: bool,
    api_key: Option<String>,
    started: u64,
}

pub fn run(a: Args) -> Result<()> {
    a.backend.check_flags()?;
    let dir = super::model_dir_arg(&a.model)?;
    let no_tokenizer = || anyhow!("{} has no tokenizer.json: smelt serve needs one", dir.display());
    let tokenizer = smelt::load_tokenizer(&dir, None)?.ok_or_else(no_tokenizer)?;
    let defaults = BatchOptions::default();
    let batch = BatchOptions {
        kv_budget_bytes: a.kv_memory.unwrap_or(defaults.kv_budget_bytes),
        max_batch: a.max_batch.unwrap_or(defaults.max_batch),
        max_step_tokens: a.max_step_tokens.unwrap_or(defaults.max_step_tokens),
        ..defaults
    };
    if let Some(limit) = a.backend.memory_limit()? {
        let bytes = batch.kv_budget_bytes as u64;
        limit.check(&format!("--kv-memory {}", super::size(bytes)), bytes)?;
    }
    let options = ModelOptions { batch: Some(batch), needs: Needs::Tokenizer, ..a.backend.options() };
    let metrics = Arc::new(Metrics::default());
    let (commands, commands_rx) = mpsc::channel();
    let (backend, load_dir) = (a.backend, dir.clone());
    let load = move || {
        // The engine's own copy of the tokenizer: the model keeps it on the engine thread.
        let tokenizer = smelt::load_tokenizer(&load_dir, None)?;
        backend.load(&load_dir, &options, tokenizer)
    };
    let (loaded, engine) = engine::spawn(load, commands_rx, metrics.clone())?;
    let capacity = batch.max_batch + a.max_waiting;
    let info = ServerInfo {
        name: a.served_model_name.unwrap_or_else(|| a.model.display().to_string()),
        context: loaded.context,
        vocab: loaded.vocab,
        sampling_defaults: loaded.sampling_defaults,
        tokenizer,
    };
    let state = AppState {
        info: Arc::new(info),
        engine: commands,
        metrics,
        admission: Arc::new(Semaphore::new(capacity)),
        capacity,
        next_seq: AtomicUsize::new(0),
        reasoning: a.reasoning_parser == Some(ReasoningParser::Qwen3),
        api_key: a.api_key,
        started: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(serve(Arc::new(state), &a.host, a.port))?;
    // Every sender is gone with the server: the engine finishes or cancels what is left.
    drop(runtime);
    match engine.join() {
        Ok(result) => result.context("the engine failed"),
        Err(_) => Err(anyhow!("the engine thread panicked")),
    }
}

async fn serve(state: Arc<AppState>, host: &str, port: u16) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))?;
    let address = listener.local_addr().context("the bound address")?;
    let app = Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .fallback(|request: Request| async move { ApiError::not_found(request.uri().path()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    super::print_stdout(&format!("smelt serve: listening on http://{address}\n"))?;
    let stop = Arc::new(Notify::new());
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.notified().await }
    });
    let signals = async {
        shutdown_signal().await;
        tracing::info!("stopping: no new connections; in-flight requests get {}s", SHUTDOWN_GRACE.as_secs());
        stop.notify_one();
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("serving HTTP"),
        () = signals => {
            tracing::warn!("in-flight requests cancelled after {}s", SHUTDOWN_GRACE.as_secs());
            Ok(())
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The API key on /v1/ endpoints, and every response counted by endpoint and status.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint =
        ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize"]
            .into_iter()
            .find(|&e| e == path)
            .unwrap_or("other");
    let refused = match &state.api_key {
        Some(key) if path.starts_with("/v1/") => {
            let given = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            given.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str())
        }
        _ => false,
    };
    let response = if refused { ApiError::unauthorized().into_response() } else { next.run(request).await };
    state.metrics.request(endpoint, response.status().as_u16());
    response
}
