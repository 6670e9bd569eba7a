//! Wick's integration tests: one binary, one module per area.

mod archs;
mod bad_models;
mod batching;
mod fuzz;
mod gpt_oss;
mod grammar;
mod hf_archs;
mod oracle;
mod perplexity;
mod prefix_cache;
mod text;
