//! Loading a model from a GGUF file or a Hugging Face folder: the network and its text side.

use std::path::Path;

use crate::model::CausalLm;
use crate::text::TextProcessor;
use crate::Result;

/// Options that change how a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Chat template source overriding the model's own.
    pub chat_template: Option<String>,
}

/// A loaded model with its text side.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub text: TextProcessor,
    /// A name for the model derived from the file or folder name.
    pub name: String,
}

/// Loads a GGUF file or a Hugging Face model folder.
pub fn load(_path: &Path, _opts: &LoadOptions) -> Result<LoadedModel> {
    Err(crate::EngineError::Unsupported("loader not yet implemented".into()))
}
