//! Error types of the engine crate.

/// Anything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("model load: {0}")]
    Load(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A model's forward failed (an internal error, not the request's fault).
    #[error("forward: {0}")]
    Forward(String),
    #[error("engine stopped")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    /// The same error, naming the model file or folder it came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        let at = path.display();
        match self {
            EngineError::Load(m) => EngineError::Load(format!("{at}: {m}")),
            EngineError::Unsupported(m) => EngineError::Unsupported(format!("{at}: {m}")),
            EngineError::Candle(e) => EngineError::Load(format!("{at}: {e}")),
            EngineError::Io(e) => EngineError::Load(format!("{at}: {e}")),
            other => other,
        }
    }
}

/// Why [`crate::Engine::submit`] refused a request.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SubmitError {
    /// The waiting queue is full; retry later.
    #[error("the server is overloaded: {waiting} requests are already waiting")]
    Overloaded { waiting: usize },
    /// prompt + max_tokens exceed the model's context.
    #[error("this model's maximum context length is {max_context} tokens, but {requested} tokens were requested ({prompt} in the prompt, {completion} for the completion)")]
    ContextLength { max_context: usize, requested: usize, prompt: usize, completion: usize },
    /// The request can never be served (e.g. needs more KV blocks than exist).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}
