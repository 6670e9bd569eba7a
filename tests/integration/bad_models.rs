//! Broken model files give a clear error naming the file and the problem, never a panic:
//! a truncated GGUF, a file that is not GGUF, a missing tensor, a tensor whose shape does not
//! match the metadata, an unknown RoPE scaling type, an unknown architecture, and a Hugging
//! Face folder whose config.json lacks a field. Each starts from a good fixture file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use wick_engine::model::{load_gguf_model, load_safetensors_model, WeightOptions};
use wick_engine::EngineError;
use wick_tests::tiny_model::TinyLlama;

use crate::archs::fixtures_dir;

/// Copies the llama fixture to `dst`, editing its metadata and dropping a tensor.
fn rewrite(dst: &Path, edit: impl FnOnce(&mut HashMap<String, Value>), drop: Option<&str>) {
    let src = fixtures_dir().join("llama.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut md = content.metadata.clone();
    edit(&mut md);
    let mut names: Vec<&String> = content.tensor_infos.keys().filter(|n| Some(n.as_str()) != drop).collect();
    names.sort();
    let tensors: Vec<(String, QTensor)> =
        names.iter().map(|n| ((*n).clone(), content.tensor(&mut f, n, &Device::Cpu).unwrap())).collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(dst).unwrap();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

fn load_error(path: &Path) -> String {
    match load_gguf_model(path, &WeightOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures_dir().join("llama.gguf")).unwrap();
    for (name, cut) in [("header.gguf", 20), ("half.gguf", bytes.len() / 2), ("tail.gguf", bytes.len() - 100)] {
        let path = tmp(&dir, name);
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_error(&path);
        assert!(err.contains(name), "{name}: {err}");
    }
    let path = tmp(&dir, "notes.gguf");
    std::fs::write(&path, "these are not weights").unwrap();
    let err = load_error(&path);
    assert!(err.contains("notes.gguf") && err.contains("GGUF"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "no-ffn.gguf");
    rewrite(&path, |_| {}, Some("blk.1.ffn_down.weight"));
    let err = load_error(&path);
    assert!(err.contains("no-ffn.gguf") && err.contains("missing tensor blk.1.ffn_down.weight"), "{err}");
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "wrong-ff.gguf");
    rewrite(&path, |md| _ = md.insert("llama.feed_forward_length".into(), Value::U32(100)), None);
    let err = load_error(&path);
    assert!(err.contains("wrong-ff.gguf") && err.contains("blk.0.ffn_gate.weight") && err.contains("100"), "{err}");
}

#[test]
fn unknown_rope_scaling_and_architecture_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(&dir, "rope.gguf");
    rewrite(
        &path,
        |md| {
            md.insert("llama.rope.scaling.type".into(), Value::String("wobble".into()));
            md.insert("llama.rope.scaling.factor".into(), Value::F32(4.0));
        },
        Some("rope_freqs.weight"),
    );
    match load_gguf_model(&path, &WeightOptions::default()) {
        Err(EngineError::Unsupported(m)) => assert!(m.contains("rope.gguf") && m.contains("wobble"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    let path = tmp(&dir, "mamba.gguf");
    rewrite(&path, |md| _ = md.insert("general.architecture".into(), Value::String("mamba".into())), None);
    match load_gguf_model(&path, &WeightOptions::default()) {
        Err(EngineError::Unsupported(m)) => {
            assert!(m.contains("mamba.gguf") && m.contains("\"mamba\"") && m.contains("gemma3"), "{m}")
        }
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
}

#[test]
fn hf_config_without_a_required_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = TinyLlama::default();
    tiny.write_hf(dir.path()).unwrap();
    let mut cfg = tiny.config_json();
    cfg.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_safetensors_model(dir.path(), &WeightOptions::default()).err().expect("loaded").to_string();
    assert!(err.contains("intermediate_size") && err.contains(&dir.path().display().to_string()), "{err}");
}
