//! The `wick` binary: `wick serve` (the OpenAI API and the chat page), `wick chat`, `wick perplexity` and `wick bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wick_engine::embed::{EmbedOptions, Embedder, EmbedderConfig, Pooling};
use wick_engine::sampling::SamplingDefaults;
use wick_engine::{Engine, LoadOptions};
use wick_server::chat_client::ChatArgs;
use wick_server::cli::{BenchArgs, Cli, Command, PerplexityArgs, ServeArgs};
use wick_server::config::{LogFormat, ModelSettings, Settings};
use wick_server::model_source::{self, ResolvedModel};
use wick_server::openai::common::unix_now;
use wick_server::registry::{EmbedReady, LoadFn, Loaded, ModelEntry, ModelKind};
use wick_server::state::{AppState, Ready};
use wick_server::{app, serve, shutdown};

fn main() -> Result<()> {
    let cli = Cli::parse();
    // candle's thread pool takes the cores; the HTTP side stays small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(*args)),
        Command::Perplexity(args) => perplexity(args),
        Command::Bench(args) => rt.block_on(async { tokio::task::spawn_blocking(move || bench(args)).await? }),
        Command::Chat(args) => rt.block_on(chat(args)),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

// The engine's `LoadOptions` grows fields (weights handling); keep their defaults.
#[allow(clippy::needless_update)]
fn load_options(settings: &Settings) -> Result<LoadOptions> {
    let chat_template = match &settings.model.chat_template {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading chat template {}", p.display()))?),
        None => None,
    };
    Ok(LoadOptions { chat_template, ..LoadOptions::default() })
}

/// Resolves, loads and starts the engine (blocking: downloads and file reads).
fn start_engine(settings: &Settings) -> Result<(Engine, ResolvedModel, SamplingDefaults)> {
    let resolved = model_source::resolve(&settings.model, &settings.default_model)?;
    let (engine, sampling) = load_chat(settings, &resolved.path, &load_options(settings)?)?;
    Ok((engine, resolved, sampling))
}

/// Loads the chat model at `path` and starts its engine.
fn load_chat(settings: &Settings, path: &Path, opts: &LoadOptions) -> Result<(Engine, SamplingDefaults)> {
    tracing::info!(path = %path.display(), "loading model");
    let loaded = wick_engine::load(path, opts).with_context(|| format!("loading {}", path.display()))?;
    let sampling = loaded.sampling.over(settings.sampling.to_defaults()).resolved();
    let engine = Engine::start(loaded.model, Arc::new(loaded.text), settings.engine.to_engine_config()?)
        .context("starting the engine")?;
    Ok((engine, sampling))
}

/// Bytes of the model files at `path` (a file, or a folder's weight files).
fn weight_bytes(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    let weights = |p: &PathBuf| p.extension().is_some_and(|x| x == "safetensors" || x == "gguf");
    let Ok(dir) = std::fs::read_dir(path) else { return 0 };
    dir.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(weights)
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// One model to register: where it is, and how it is to be served.
struct Planned {
    path: PathBuf,
    names: Vec<String>,
    kind: ModelKind,
    preload: bool,
    idle_unload: Option<Duration>,
    matryoshka: bool,
    /// An embedding model's pooling override and prompts (`[[models]]` only).
    pooling: Option<String>,
    prompts: std::collections::BTreeMap<String, String>,
    default_prompt_name: Option<String>,
    /// The primary model gets `[model]`'s load options (chat template).
    primary: bool,
}

/// Resolves every configured model (blocking: may download): `[model]` (or the default
/// model), then each of `[[models]]`.
fn plan_models(settings: &Settings) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    let primary = model_source::resolve(&settings.model, &settings.default_model)?;
    let names = if settings.model.served_model_name.is_empty() {
        vec![primary.name.clone()]
    } else {
        settings.model.served_model_name.clone()
    };
    out.push(Planned {
        kind: model_source::kind_of(&primary.path),
        path: primary.path,
        names,
        preload: true,
        idle_unload: None,
        matryoshka: false,
        pooling: None,
        prompts: Default::default(),
        default_prompt_name: None,
        primary: true,
    });
    for m in &settings.models {
        let source = ModelSettings { model: Some(m.model.clone()), ..settings.model.clone() };
        let r =
            model_source::resolve(&source, &settings.default_model).with_context(|| format!("model {:?}", m.model))?;
        let mut names = vec![m.name.clone().unwrap_or(r.name)];
        names.extend(m.aliases.iter().cloned());
        out.push(Planned {
            kind: m.kind.unwrap_or_else(|| model_source::kind_of(&r.path)),
            path: r.path,
            names,
            preload: m.preload,
            idle_unload: (m.idle_unload_secs > 0).then(|| Duration::from_secs(m.idle_unload_secs)),
            matryoshka: m.matryoshka,
            pooling: m.pooling.clone(),
            prompts: m.prompts.clone(),
            default_prompt_name: m.default_prompt_name.clone(),
            primary: false,
        });
    }
    Ok(out)
}

/// The registry entry of a planned model, with its loader.
fn entry(p: Planned, settings: &Settings, rt: tokio::runtime::Handle) -> Result<ModelEntry> {
    let kv_dtype = settings.engine.to_engine_config()?.kv_cache_dtype;
    let kv_bytes = match p.kind {
        ModelKind::Chat => (settings.engine.kv_cache_mb as u64) << 20,
        ModelKind::Embedding => {
            wick_engine::embed::kv_bytes_bound(&p.path, kv_dtype).with_context(|| format!("model {:?}", p.names[0]))?
        }
    };
    let bytes = weight_bytes(&p.path) + kv_bytes;
    let settings = settings.clone();
    let opts = if p.primary { load_options(&settings)? } else { LoadOptions::default() };
    let (path, names, matryoshka) = (p.path.clone(), p.names.clone(), p.matryoshka);
    let embed_opts = EmbedOptions {
        pooling: p
            .pooling
            .as_deref()
            .map(Pooling::parse)
            .transpose()
            .with_context(|| format!("model {:?}", names[0]))?,
        prompts: p.prompts.clone(),
        default_prompt_name: p.default_prompt_name.clone(),
        kv_dtype,
    };
    let load: LoadFn = match p.kind {
        ModelKind::Chat => Box::new(move || {
            let (engine, sampling) = load_chat(&settings, &path, &opts)?;
            tracing::info!(model = %names[0], sampling = ?sampling, "ready (sampling defaults in force)");
            let blocks = engine.stats().kv_blocks_total;
            wick_server::metrics::set_cache_config(&names[0], settings.engine.block_size, blocks);
            let backend: Arc<dyn wick_server::backend::Backend> = Arc::new(engine);
            rt.spawn(wick_server::stats_log::run(Arc::downgrade(&backend), Duration::from_secs(10)));
            let max_token_bytes = wick_server::validate::longest_token(backend.as_ref());
            let ready = Ready { backend, model_ids: names.clone(), created: unix_now(), sampling, max_token_bytes };
            Ok(Loaded::Chat(Arc::new(ready)))
        }),
        ModelKind::Embedding => Box::new(move || {
            tracing::info!(path = %path.display(), "loading embedding model");
            let model = wick_engine::embed::load(&path, &embed_opts)?;
            let info = model.info().clone();
            let cfg = EmbedderConfig {
                max_batch_tokens: settings.engine.embedding_batch_tokens,
                max_waiting: settings.engine.max_waiting,
            };
            let embedder = Embedder::start(model, cfg)?;
            tracing::info!(
                model = %names[0], dim = info.dim, max_len = info.max_len, pooling = info.pooling.name(),
                normalize = info.normalize, prompts = ?info.prompts.keys().collect::<Vec<_>>(),
                default_prompt = ?info.default_prompt_name, "embedding model ready"
            );
            Ok(Loaded::Embedding(Arc::new(EmbedReady { name: names[0].clone(), embedder, matryoshka })))
        }),
    };
    Ok(ModelEntry {
        names: p.names,
        kind: p.kind,
        preload: p.preload,
        idle_unload: p.idle_unload,
        bytes,
        load: Some(load),
    })
}

/// Resolves, registers and preloads every model.
async fn load_models(state: Arc<AppState>, settings: Settings) -> Result<()> {
    let rt = tokio::runtime::Handle::current();
    let registry = state.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for p in plan_models(&settings)? {
            let e = entry(p, &settings, rt.clone())?;
            registry.models.add(e).map_err(anyhow::Error::msg)?;
        }
        Ok(())
    })
    .await
    .context("model loading panicked")??;
    state.models.preload().await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Unloads idle models, every second, for as long as the process runs.
async fn sweep_models(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        state.models.sweep().await;
    }
}

/// The handlers' state for `settings`, without a response store.
fn app_state(settings: &Settings, keys: Vec<String>) -> AppState {
    let s = &settings.server;
    let mut state =
        AppState::new(keys, Duration::from_secs(s.sse_keep_alive_secs.max(1)), s.max_body_bytes).with_ui(s.ui);
    state.body_read_timeout = Duration::from_secs(s.body_read_timeout_secs.max(1));
    state.models.set_budget_mb((settings.engine.memory_budget_mb > 0).then_some(settings.engine.memory_budget_mb));
    state
}

fn limits(settings: &Settings) -> serve::Limits {
    let s = &settings.server;
    serve::Limits {
        max_connections: s.max_connections,
        header_read_timeout: Duration::from_secs(s.header_read_timeout_secs.max(1)),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let settings = args.settings()?;
    init_logging(settings.server.log_format, &settings.server.log_level);
    let keys = settings.all_api_keys()?;
    let s = &settings.server;
    wick_server::cpu::tune_allocator();
    wick_server::metrics::set_compat(s.metrics_compat);
    // Off the async workers: the PostgreSQL client blocks on a runtime of its own.
    let (spec, data_dir) = (settings.responses.store.clone(), s.data_dir());
    let store = tokio::task::spawn_blocking(move || wick_server::responses::store::open(&spec, &data_dir))
        .await
        .context("opening the response store")?
        .context("opening the response store (--responses-store)")?;
    match &store {
        Some(st) => {
            tracing::info!(store = %st.describe(), "response store");
            let retention = settings.responses.retention();
            tokio::spawn(wick_server::responses::retention_task(st.clone(), retention, Duration::from_secs(600)));
        }
        None => tracing::info!("response store off: /v1/responses answers without storing"),
    }
    let state = Arc::new(app_state(&settings, keys).with_response_store(store));
    let router = app::router(state.clone(), &s.cors_allow_origins);
    let addr: SocketAddr = format!("{}:{}", s.host, s.port)
        .parse()
        .with_context(|| format!("bad listen address {}:{}", s.host, s.port))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "listening (model loading; /ready answers 503 until it is up)");

    let models_state = state.clone();
    let models_settings = settings.clone();
    tokio::spawn(async move {
        if let Err(e) = load_models(models_state.clone(), models_settings).await {
            tracing::error!("{e:#}");
            eprintln!("wick: {e:#}");
            std::process::exit(1);
        }
        sweep_models(models_state).await;
    });

    let signal = shutdown::on_signal();
    let grace = Duration::from_secs(s.shutdown_timeout_secs);
    serve::serve(listener, router, limits(&settings), signal, grace).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// `wick chat`: against `--url`, or with `--local` against a server of this process's own on a
/// loopback port (no chat page, no response store), behind a one-off API key so that no other
/// local user can use it.
async fn chat(mut args: ChatArgs) -> Result<()> {
    if !args.local {
        return wick_server::chat_client::run(args).await;
    }
    let serve_args = ServeArgs {
        config: args.config.clone(),
        model: args.model.take().into_iter().collect(),
        offline: args.offline.then_some(true),
        ..ServeArgs::default()
    };
    let mut settings = serve_args.settings()?;
    settings.server.ui = false;
    init_logging(settings.server.log_format, "warn");
    wick_server::cpu::tune_allocator();
    let key = format!("wick-chat-{}", uuid::Uuid::new_v4().simple());
    let state = Arc::new(app_state(&settings, vec![key.clone()]));
    let router = app::router(state.clone(), &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
    let addr = listener.local_addr()?;
    let (stop, signal) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve::serve(listener, router, limits(&settings), signal, Duration::from_secs(1)));
    println!("loading {} ...", settings.model.model.as_deref().unwrap_or("the default model"));
    load_models(state.clone(), settings).await?;
    tokio::spawn(sweep_models(state));
    args.url = format!("http://{addr}");
    args.api_key = Some(key);
    let chatted = wick_server::chat_client::run(args).await;
    let _ = stop.send(true);
    let _ = server.await;
    chatted
}

/// Loads `model` (or the default) with default settings and starts the engine.
fn engine_for(model: Option<String>) -> Result<(Engine, ResolvedModel)> {
    let mut settings = Settings::default();
    settings.model.model = model;
    start_engine(&settings).map(|(e, r, _)| (e, r))
}

fn bench(args: BenchArgs) -> Result<()> {
    init_logging(LogFormat::Text, "warn");
    let (engine, resolved) = engine_for(args.model.clone())?;
    println!("model: {}", resolved.path.display());
    let opts = wick_engine::bench::BenchOptions {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        concurrency: args.concurrency.clone(),
        repetitions: args.repetitions.max(1),
    };
    wick_engine::bench::run(&engine, &opts, |r| {
        println!("{:<24} {:>8} tokens {:>9.3} s {:>10.1} tok/s", r.name, r.tokens, r.seconds, r.tokens_per_second())
    })?;
    Ok(())
}

fn perplexity(args: PerplexityArgs) -> Result<()> {
    init_logging(LogFormat::Text, "warn");
    let settings = Settings::default();
    let mut model = settings.model.clone();
    model.model = args.model.clone();
    let resolved = model_source::resolve(&model, &settings.default_model)?;
    let loaded = wick_engine::load(&resolved.path, &LoadOptions::default())
        .with_context(|| format!("loading {}", resolved.path.display()))?;
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    // As llama-perplexity: tokenize with the model's own BOS rule, and put BOS at the start of
    // every window when the model adds one.
    let (bos, add_bos) = loaded.text.bos();
    let tokens = loaded.text.encode(&text, true)?;
    let opts = wick_engine::perplexity::PerplexityOptions {
        ctx: args.ctx,
        bos: if add_bos { bos } else { None },
        kv_dtype: args.kv_cache_dtype,
        ..Default::default()
    };
    println!(
        "model: {}\nfile: {} ({} tokens, {} windows of {})",
        resolved.path.display(),
        args.file.display(),
        tokens.len(),
        tokens.len() / args.ctx.max(1),
        args.ctx
    );
    let report = wick_engine::perplexity::perplexity(loaded.model.as_ref(), &tokens, &opts, |w| {
        println!("[{}]{:.4}", w.index + 1, w.running_ppl);
    })?;
    println!("PPL = {:.4} +/- {:.5} ({} tokens scored)", report.ppl, report.ppl_stderr, report.tokens_scored);
    Ok(())
}
