//! Shared helpers for wick's integration tests.
pub mod tiny_hf;
pub mod tiny_model;
