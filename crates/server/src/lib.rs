//! Wick's server.
