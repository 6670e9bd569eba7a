//! Shared helpers for wick's integration tests.
