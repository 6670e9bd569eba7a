//! Where weights and hyperparameters come from: a GGUF file (typed access to its metadata,
//! tensors read on demand, quantized ones kept quantized) or a Hugging Face folder
//! (`config.json` and every `*.safetensors` file, F32/F16/BF16). Both hand the decoder
//! [`RawWeight`]s by name through [`TensorSource`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::Value as Json;

use crate::model::backend::RawWeight;
use crate::{EngineError, Result};

fn load_err(msg: impl Into<String>) -> EngineError {
    EngineError::Load(msg.into())
}

/// Named tensors of one model file or folder.
pub trait TensorSource {
    /// The tensor's shape, outermost first (`[out, in]` for a linear weight), if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads the tensor, or `None` when the file has no such tensor.
    fn read(&mut self, name: &str) -> Result<Option<RawWeight>>;
}

/// A parsed GGUF file with its reader.
pub struct GgufSource<'a, R> {
    pub content: &'a Content,
    pub reader: &'a mut R,
}

impl<R: std::io::Read + std::io::Seek> TensorSource for GgufSource<'_, R> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims().to_vec())
    }

    fn read(&mut self, name: &str) -> Result<Option<RawWeight>> {
        if !self.content.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let t = self
            .content
            .tensor(self.reader, name, &Device::Cpu)
            .map_err(|e| load_err(format!("tensor {name}: {e}")))?;
        Ok(Some(RawWeight::Quant(t)))
    }
}

/// Typed reads of `{arch}.*` GGUF metadata.
pub struct GgufMeta<'a> {
    pub md: &'a HashMap<String, Value>,
    pub arch: String,
}

fn value_usize(v: &Value) -> Option<usize> {
    match v {
        Value::U8(x) => Some(*x as usize),
        Value::U16(x) => Some(*x as usize),
        Value::U32(x) => Some(*x as usize),
        Value::U64(x) => Some(*x as usize),
        Value::I8(x) => usize::try_from(*x).ok(),
        Value::I16(x) => usize::try_from(*x).ok(),
        Value::I32(x) => usize::try_from(*x).ok(),
        Value::I64(x) => usize::try_from(*x).ok(),
        _ => None,
    }
}

fn value_f32(v: &Value) -> Option<f32> {
    match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        other => value_usize(other).map(|x| x as f32),
    }
}

impl<'a> GgufMeta<'a> {
    pub fn new(content: &'a Content) -> Self {
        let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned();
        Self { md: &content.metadata, arch: arch.unwrap_or_default() }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(&format!("{}.{key}", self.arch))
    }

    /// `{arch}.{key}` as an integer.
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(value_usize)
    }

    pub fn need_usize(&self, key: &str) -> Result<usize> {
        self.usize(key).ok_or_else(|| load_err(format!("GGUF metadata {}.{key} is missing", self.arch)))
    }

    pub fn f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(value_f32)
    }

    pub fn need_f32(&self, key: &str) -> Result<f32> {
        self.f32(key).ok_or_else(|| load_err(format!("GGUF metadata {}.{key} is missing", self.arch)))
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.to_string().ok()).cloned()
    }

    /// `{arch}.{key}` as a per-layer bool array, if it is one.
    pub fn bools(&self, key: &str) -> Option<Vec<bool>> {
        match self.get(key)? {
            Value::Array(a) => a.iter().map(|v| v.to_bool().ok()).collect(),
            _ => None,
        }
    }
}

/// A Hugging Face model folder: `config.json` and its safetensors weights.
pub struct HfSource {
    tensors: HashMap<String, Tensor>,
}

impl HfSource {
    /// Reads every `*.safetensors` file of `dir`. Multimodal checkpoints keep the text model
    /// under `language_model.`; that prefix is dropped.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(load_err(format!("no .safetensors files in {}", dir.display())));
        }
        let mut tensors = HashMap::new();
        for f in &files {
            let loaded = candle_core::safetensors::load(f, &Device::Cpu)
                .map_err(|e| load_err(format!("{}: {e}", f.display())))?;
            for (name, t) in loaded {
                let name = name.strip_prefix("language_model.").map(str::to_owned).unwrap_or(name);
                tensors.insert(name, t);
            }
        }
        Ok(Self { tensors })
    }
}

impl TensorSource for HfSource {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }

    fn read(&mut self, name: &str) -> Result<Option<RawWeight>> {
        Ok(self.tensors.remove(name).map(RawWeight::Dense))
    }
}

/// Reads `config.json` of a folder; for multimodal configs the text model's `text_config`
/// (with the top level's `architectures`).
pub fn read_hf_config(dir: &Path) -> Result<Json> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| load_err(format!("{}: {e}", path.display())))?;
    let cfg: Json = serde_json::from_slice(&bytes).map_err(|e| load_err(format!("{}: {e}", path.display())))?;
    Ok(match cfg.get("text_config") {
        Some(text) if text.is_object() => {
            let mut text = text.clone();
            text["architectures"] = cfg["architectures"].clone();
            text
        }
        _ => cfg,
    })
}

/// Typed reads of a `config.json`.
pub struct HfConfig<'a>(pub &'a Json);

impl HfConfig<'_> {
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.0[key].as_u64().map(|x| x as usize)
    }

    pub fn need_usize(&self, key: &str) -> Result<usize> {
        self.usize(key).ok_or_else(|| load_err(format!("config.json: {key} is missing")))
    }

    pub fn f32(&self, key: &str) -> Option<f32> {
        self.0[key].as_f64().map(|x| x as f32)
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.0[key].as_bool()
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.0[key].as_str()
    }
}

/// Opens a GGUF file for reading.
pub fn open_gguf(path: &Path) -> Result<(Content, File)> {
    let mut file = File::open(path).map_err(|e| load_err(format!("{}: {e}", path.display())))?;
    let content = Content::read(&mut file)
        .map_err(|e| EngineError::Unsupported(format!("{} is not a readable GGUF file: {e}", path.display())))?;
    Ok((content, file))
}
