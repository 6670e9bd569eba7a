//! Router-level tests with a scripted engine.
