//! OpenAI's wire types: requests as they arrive (strict: unknown fields are rejected) and the
//! responses and stream chunks we send back.

pub mod chat;
pub mod common;
pub mod completions;
pub mod embeddings;
pub mod responses;
