//! `wick perplexity`: llama-perplexity-compatible scoring through the engine.
