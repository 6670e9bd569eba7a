//! `Sequence`: one choice of one request as it moves through the engine.
