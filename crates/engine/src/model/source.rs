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
use crate::model::gguf::{GgufFile, OtherTensor, GGML_TYPE_MXFP4};
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

/// A parsed GGUF file with its reader; `other` holds the tensors of types candle does not
/// read (MXFP4), from [`GgufFile`].
pub struct GgufSource<'a, R> {
    pub content: &'a Content,
    pub other: Option<&'a HashMap<String, OtherTensor>>,
    pub reader: &'a mut R,
}

impl<R: std::io::Read + std::io::Seek> TensorSource for GgufSource<'_, R> {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let other = || self.other.and_then(|o| o.get(name)).map(|t| t.shape.clone());
        self.content.tensor_infos.get(name).map(|t| t.shape.dims().to_vec()).or_else(other)
    }

    fn read(&mut self, name: &str) -> Result<Option<RawWeight>> {
        if !self.content.tensor_infos.contains_key(name) {
            let Some(t) = self.other.and_then(|o| o.get(name)) else { return Ok(None) };
            let blocks = t.read(self.reader, self.content.tensor_data_offset, name)?;
            return match t.dtype {
                GGML_TYPE_MXFP4 => Ok(Some(RawWeight::Mxfp4 { shape: t.shape.clone(), blocks })),
                _ => Err(EngineError::Unsupported(format!("tensor {name} has type {}", t.type_name()))),
            };
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

/// Every tensor of the `*.safetensors` files of `dir`, read in file-name order.
pub fn read_safetensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
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
        let loaded =
            candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| load_err(format!("{}: {e}", f.display())))?;
        tensors.extend(loaded);
    }
    Ok(tensors)
}

/// A Hugging Face model folder: `config.json` and its safetensors weights.
pub struct HfSource {
    tensors: HashMap<String, Tensor>,
    /// Experts already converted from a shared stored tensor (gate beside up), by name.
    pending: HashMap<String, RawWeight>,
}

impl HfSource {
    /// Reads every `*.safetensors` file of `dir`. Multimodal checkpoints keep the text model
    /// under `language_model.`; that prefix is dropped. A bare base model saved without its
    /// head (`Qwen3Model`, as sentence-transformers' Qwen3-Embedding is: `embed_tokens.weight`,
    /// `layers.*`, `norm.weight`) gets the `model.` prefix the architectures name.
    pub fn open(dir: &Path) -> Result<Self> {
        let mut tensors: HashMap<String, Tensor> = read_safetensors(dir)?
            .into_iter()
            .map(|(name, t)| (name.strip_prefix("language_model.").map(str::to_owned).unwrap_or(name), t))
            .collect();
        if tensors.contains_key("embed_tokens.weight") && !tensors.keys().any(|k| k.starts_with("model.")) {
            tensors = tensors.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
        }
        Ok(Self::from_tensors(tensors))
    }

    /// A source over tensors already in memory (named as in the safetensors files).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors, pending: HashMap::new() }
    }

    /// transformers' gpt-oss experts under wick's `{prefix}mlp.experts.{gate,up,down}.{weight,bias}`
    /// names (`[experts, out, in]` weights, `[experts, out]` biases): `gate_up_proj*` holds gate
    /// and up interleaved (even and odd rows), as MXFP4 `_blocks` (`[E, out, in/32, 16]`, byte
    /// `j` holding values `2j` and `2j+1`) with `_scales` (`[E, out, in/32]`, E8M0), or as
    /// floats `[E, in, out]`; `down_proj*` likewise without the interleaving.
    fn expert_parts(&self, name: &str) -> Option<(String, &'static str, bool)> {
        let (prefix, rest) = name.split_once("mlp.experts.")?;
        let (part, suffix) = rest.split_once('.')?;
        let part = match part {
            "gate" => "gate",
            "up" => "up",
            "down" => "down",
            _ => return None,
        };
        let bias = match suffix {
            "weight" => false,
            "bias" => true,
            _ => return None,
        };
        Some((format!("{prefix}mlp.experts."), part, bias))
    }

    fn expert_shape(&self, name: &str) -> Option<Vec<usize>> {
        let (base, part, bias) = self.expert_parts(name)?;
        let stored = if part == "down" { "down_proj" } else { "gate_up_proj" };
        let halve = |n: usize| if part == "down" { n } else { n / 2 };
        if bias {
            let d = self.tensors.get(&format!("{base}{stored}_bias"))?.dims().to_vec();
            return Some(vec![d[0], halve(d[1])]);
        }
        if let Some(b) = self.tensors.get(&format!("{base}{stored}_blocks")) {
            let d = b.dims();
            return (d.len() == 4).then(|| vec![d[0], halve(d[1]), d[2] * d[3] * 2]);
        }
        let d = self.tensors.get(&format!("{base}{stored}"))?.dims().to_vec();
        (d.len() == 3).then(|| vec![d[0], halve(d[2]), d[1]])
    }

    /// Converts the stored tensor behind `name` (and, for gate/up, its sibling, kept in
    /// `pending`), removing the stored tensors.
    fn read_expert(&mut self, name: &str) -> Result<Option<RawWeight>> {
        if let Some(w) = self.pending.remove(name) {
            return Ok(Some(w));
        }
        let Some((base, part, bias)) = self.expert_parts(name) else { return Ok(None) };
        let stored = if part == "down" { "down_proj" } else { "gate_up_proj" };
        let suffix = if bias { "bias" } else { "weight" };
        let (gate, up) = (format!("{base}gate.{suffix}"), format!("{base}up.{suffix}"));
        let split = |w: Tensor, dim: usize| -> Result<(Tensor, Tensor)> {
            // Even and odd entries of `dim`.
            let mut dims = w.dims().to_vec();
            let n = dims[dim];
            dims[dim] = n / 2;
            dims.insert(dim + 1, 2);
            let w = w.reshape(dims)?;
            Ok((w.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?, w.narrow(dim + 1, 1, 1)?.squeeze(dim + 1)?))
        };
        if bias {
            let Some(b) = self.tensors.remove(&format!("{base}{stored}_bias")) else { return Ok(None) };
            if part == "down" {
                return Ok(Some(RawWeight::Dense(b)));
            }
            let (g, u) = split(b, 1)?;
            return Ok(Some(self.keep_sibling(part, &gate, &up, RawWeight::Dense(g), RawWeight::Dense(u))));
        }
        if let Some(blocks) = self.tensors.remove(&format!("{base}{stored}_blocks")) {
            let scales = self
                .tensors
                .remove(&format!("{base}{stored}_scales"))
                .ok_or_else(|| load_err(format!("{base}{stored}_blocks without _scales")))?;
            let (e, rows, nb) = (blocks.dim(0)?, blocks.dim(1)?, blocks.dim(2)?);
            if blocks.dims() != [e, rows, nb, 16] || scales.dims() != [e, rows, nb] {
                return Err(load_err(format!(
                    "{base}{stored}: blocks {:?} and scales {:?} do not match",
                    blocks.dims(),
                    scales.dims()
                )));
            }
            let blocks: Vec<u8> = blocks.flatten_all()?.to_vec1()?;
            let scales: Vec<u8> = scales.flatten_all()?.to_vec1()?;
            // One output row of ggml blocks.
            let row = |e: usize, r: usize, out: &mut Vec<u8>| {
                for b in 0..nb {
                    let at = (e * rows + r) * nb + b;
                    out.push(scales[at]);
                    let src = &blocks[at * 16..at * 16 + 16];
                    let v = |i: usize| if i.is_multiple_of(2) { src[i / 2] & 0x0F } else { src[i / 2] >> 4 };
                    out.extend((0..16).map(|j| v(j) | (v(j + 16) << 4)));
                }
            };
            let k = nb * 32;
            let convert = |pick: &dyn Fn(usize) -> usize, n: usize| {
                let mut out = Vec::with_capacity(e * n * nb * 17);
                for x in 0..e {
                    for r in 0..n {
                        row(x, pick(r), &mut out);
                    }
                }
                RawWeight::Mxfp4 { shape: vec![e, n, k], blocks: out }
            };
            if part == "down" {
                return Ok(Some(convert(&|r| r, rows)));
            }
            let (g, u) = (convert(&|r| 2 * r, rows / 2), convert(&|r| 2 * r + 1, rows / 2));
            return Ok(Some(self.keep_sibling(part, &gate, &up, g, u)));
        }
        let Some(w) = self.tensors.remove(&format!("{base}{stored}")) else { return Ok(None) };
        // Floats `[E, in, out]`: to `[E, out, in]`.
        if part == "down" {
            return Ok(Some(RawWeight::Dense(w.transpose(1, 2)?.contiguous()?)));
        }
        let (g, u) = split(w, 2)?;
        let (g, u) = (g.transpose(1, 2)?.contiguous()?, u.transpose(1, 2)?.contiguous()?);
        Ok(Some(self.keep_sibling(part, &gate, &up, RawWeight::Dense(g), RawWeight::Dense(u))))
    }

    fn keep_sibling(&mut self, part: &str, gate: &str, up: &str, g: RawWeight, u: RawWeight) -> RawWeight {
        if part == "gate" {
            self.pending.insert(up.to_string(), u);
            g
        } else {
            self.pending.insert(gate.to_string(), g);
            u
        }
    }
}

impl TensorSource for HfSource {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.tensors.get(name) {
            Some(t) => Some(t.dims().to_vec()),
            None => self.pending.get(name).map(RawWeight::dims).or_else(|| self.expert_shape(name)),
        }
    }

    fn read(&mut self, name: &str) -> Result<Option<RawWeight>> {
        match self.tensors.remove(name) {
            Some(t) => Ok(Some(RawWeight::Dense(t))),
            None => self.read_expert(name),
        }
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
pub fn open_gguf(path: &Path) -> Result<(GgufFile, File)> {
    GgufFile::open(path)
}
