//! The `wick` binary: `wick serve` (the OpenAI API and the chat page), `wick chat`, `wick perplexity` and `wick bench`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wick_engine::sampling::SamplingDefaults;
use wick_engine::{Engine, LoadOptions};
use wick_server::cli::{BenchArgs, Cli, Command, PerplexityArgs, ServeArgs};
use wick_server::config::{LogFormat, Settings};
use wick_server::model_source::{self, ResolvedModel};
use wick_server::openai::common::unix_now;
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
        Command::Chat(args) => rt.block_on(wick_server::chat_client::run(args)),
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
    tracing::info!(path = %resolved.path.display(), "loading model");
    let loaded = wick_engine::load(&resolved.path, &load_options(settings)?)
        .with_context(|| format!("loading {}", resolved.path.display()))?;
    let sampling = loaded.sampling.over(settings.sampling.to_defaults()).resolved();
    let engine = Engine::start(loaded.model, Arc::new(loaded.text), settings.engine.to_engine_config()?)
        .context("starting the engine")?;
    Ok((engine, resolved, sampling))
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
    let mut state = AppState::new(keys, Duration::from_secs(s.sse_keep_alive_secs.max(1)), s.max_body_bytes)
        .with_response_store(store)
        .with_ui(s.ui);
    state.body_read_timeout = Duration::from_secs(s.body_read_timeout_secs.max(1));
    let state = Arc::new(state);
    let router = app::router(state.clone(), &s.cors_allow_origins);
    let addr: SocketAddr = format!("{}:{}", s.host, s.port)
        .parse()
        .with_context(|| format!("bad listen address {}:{}", s.host, s.port))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "listening (model loading; /ready answers 503 until it is up)");

    let load_settings = settings.clone();
    let loader = tokio::task::spawn_blocking(move || start_engine(&load_settings));
    let load_state = state.clone();
    let names = settings.model.served_model_name.clone();
    let block_size = settings.engine.block_size;
    tokio::spawn(async move {
        match loader.await {
            Ok(Ok((engine, resolved, sampling))) => {
                let model_ids = if names.is_empty() { vec![resolved.name] } else { names };
                tracing::info!(model = %model_ids[0], sampling = ?sampling, "ready (sampling defaults in force)");
                wick_server::metrics::set_cache_config(block_size, engine.stats().kv_blocks_total);
                let backend: Arc<dyn wick_server::backend::Backend> = Arc::new(engine);
                tokio::spawn(wick_server::stats_log::run(backend.clone(), Duration::from_secs(10)));
                let max_token_bytes = wick_server::validate::longest_token(backend.as_ref());
                load_state.set_ready(Ready { backend, model_ids, created: unix_now(), sampling, max_token_bytes });
            }
            Ok(Err(e)) => {
                tracing::error!("{e:#}");
                eprintln!("wick: {e:#}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("wick: model loading panicked: {e}");
                std::process::exit(1);
            }
        }
    });

    let signal = shutdown::on_signal();
    let grace = Duration::from_secs(s.shutdown_timeout_secs);
    let limits = serve::Limits {
        max_connections: s.max_connections,
        header_read_timeout: Duration::from_secs(s.header_read_timeout_secs.max(1)),
    };
    serve::serve(listener, router, limits, signal, grace).await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
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
