//! Wick's integration tests: one binary, one module per area.

mod batching;
mod grammar;
mod oracle;
mod perplexity;
mod text;
