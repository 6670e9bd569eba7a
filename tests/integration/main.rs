//! Wick's integration tests: one binary, one module per area.
mod oracle;
mod batching;
mod perplexity;
