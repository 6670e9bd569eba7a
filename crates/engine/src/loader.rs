//! Loading a model from a GGUF file or a Hugging Face folder: the network and its text side.

use std::path::Path;

use crate::model::{self, CausalLm, WeightOptions};
use crate::sampling::SamplingDefaults;
use crate::text::TextProcessor;
use crate::{EngineError, Result};

/// Options that change how a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Chat template source overriding the model's own.
    pub chat_template: Option<String>,
    /// How weights are held in memory (re-quantization, f32 copies for large steps).
    pub weights: WeightOptions,
}

/// A loaded model with its text side.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub text: TextProcessor,
    /// A name for the model derived from the file or folder name.
    pub name: String,
    /// The sampling the model's files recommend (`generation_config.json`, GGUF
    /// `general.sampling.*`), where they say.
    pub sampling: SamplingDefaults,
}

/// Loads a GGUF file or a Hugging Face model folder.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let name = model_name(path);
    if path.is_dir() {
        let model = model::load_safetensors_model(path, &opts.weights)?;
        let text = TextProcessor::from_hf_dir(path, opts.chat_template.as_deref())?;
        let sampling = SamplingDefaults::from_generation_config(path);
        return Ok(LoadedModel { model, text, name, sampling });
    }
    if !path.is_file() {
        return Err(EngineError::Load(format!("{} does not exist", path.display())));
    }
    let mut file = std::fs::File::open(path)?;
    let gguf = model::GgufFile::read(&mut file).map_err(|e| {
        EngineError::Unsupported(format!("{} is neither a GGUF file nor a model folder: {e}", path.display()))
    })?;
    let model = model::load_gguf_file(&gguf, &mut file, &opts.weights)?;
    let content = &gguf.content;
    let text = TextProcessor::from_gguf(content, opts.chat_template.as_deref())?;
    let sampling = SamplingDefaults::from_gguf(content);
    Ok(LoadedModel { model, text, name, sampling })
}

/// The file name without a `.gguf` extension, or the folder name.
fn model_name(path: &Path) -> String {
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    base.strip_suffix(".gguf").map(str::to_owned).unwrap_or(base)
}
