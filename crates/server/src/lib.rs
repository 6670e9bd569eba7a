//! Wick's OpenAI-compatible HTTP server: the axum application (routes, OpenAI wire types,
//! validation, SSE, errors, auth, metrics), configuration, and model resolution. The `wick`
//! binary (`main.rs`) wires these to the engine.

pub mod app;
pub mod auth;
pub mod backend;
pub mod chat_client;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod error;
pub mod extract;
pub mod generation;
pub mod hub;
pub mod load_wait;
pub mod messages;
pub mod metrics;
pub mod model_source;
pub mod openai;
pub mod openapi;
pub mod output;
pub mod pypi;
pub mod reasoning;
pub mod registry;
pub mod responses;
pub mod routes;
pub mod serve;
pub mod shutdown;
pub mod sse;
pub mod state;
pub mod stats_log;
pub mod structured;
pub mod tools;
pub mod unsupported;
pub mod validate;

#[cfg(test)]
mod tests;
