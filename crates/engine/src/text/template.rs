//! Chat templates rendered with minijinja.

/// One chat message as the template sees it (content already flattened to text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template.
pub struct ChatTemplate {}
