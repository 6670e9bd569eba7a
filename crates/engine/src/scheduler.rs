//! The continuous-batching scheduler.
