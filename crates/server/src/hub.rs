//! Hugging Face hub access through hf-hub's sync API: files go into the standard cache
//! (`HF_HOME`, default `~/.cache/huggingface`) with a progress bar; `HF_TOKEN` is honoured;
//! offline, only the cache is read.

use std::path::PathBuf;

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

/// Files a safetensors model folder needs (the optional ones may be absent).
const HF_REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const HF_OPTIONAL: &[&str] =
    &["tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"];

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_owned(), RepoType::Model, revision.to_owned())
}

fn api() -> Result<Api, String> {
    let mut b = ApiBuilder::from_env().with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        b = b.with_token(Some(token));
    }
    b.build().map_err(|e| e.to_string())
}

/// A file from the local Hugging Face cache, if present.
pub fn cached_file(id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    Cache::from_env().repo(repo(id, revision)).get(file)
}

/// Downloads one file (or finds it in the cache).
pub fn download_file(id: &str, revision: &str, file: &str) -> Result<PathBuf, String> {
    api()?.repo(repo(id, revision)).get(file).map_err(|e| e.to_string())
}

/// Picks the GGUF file of a repo: the selector as a file name, else as a quant substring
/// (case-insensitive); without a selector the repo must hold exactly one GGUF file.
pub fn pick_gguf(files: &[String], selector: Option<&str>) -> Result<String, String> {
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    let chosen: Vec<&String> = match selector {
        Some(sel) => {
            if let Some(exact) = ggufs.iter().find(|f| f.as_str() == sel) {
                return Ok((*exact).clone());
            }
            let s = sel.to_ascii_lowercase();
            ggufs.iter().filter(|f| f.to_ascii_lowercase().contains(&s)).copied().collect()
        }
        None => ggufs.clone(),
    };
    match chosen.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no GGUF file matches {:?}; the repo has: {}", selector.unwrap_or(""), list(&ggufs))),
        many => Err(format!("several GGUF files match; choose one with --gguf-file: {}", list(many))),
    }
}

fn list(files: &[&String]) -> String {
    files.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Fetches a repo's model: a GGUF file (picked by `gguf_file`) or a safetensors folder.
/// Returns the GGUF file or the snapshot folder.
pub fn fetch_repo(id: &str, revision: &str, gguf_file: Option<&str>, offline: bool) -> Result<PathBuf, String> {
    if offline {
        let cache = Cache::from_env().repo(repo(id, revision));
        if let Some(file) = gguf_file.filter(|f| f.ends_with(".gguf")) {
            return cache
                .get(file)
                .ok_or_else(|| format!("{id}/{file} is not in the Hugging Face cache (offline mode)"));
        }
        let config = cache.get("config.json").ok_or_else(|| {
            format!(
                "{id} is not in the Hugging Face cache (offline mode); for a GGUF repo give the file with --gguf-file"
            )
        })?;
        return config.parent().map(PathBuf::from).ok_or_else(|| "bad cache layout".to_owned());
    }
    let api = api()?;
    let r = api.repo(repo(id, revision));
    let info = r.info().map_err(|e| format!("{id}: {e}"))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    if files.iter().any(|f| f.ends_with(".gguf")) {
        let file = pick_gguf(&files, gguf_file)?;
        return r.get(&file).map_err(|e| format!("{id}/{file}: {e}"));
    }
    let mut folder = None;
    for f in HF_REQUIRED {
        let p = r.get(f).map_err(|e| format!("{id}/{f}: {e}"))?;
        folder = p.parent().map(PathBuf::from);
    }
    for f in HF_OPTIONAL.iter().filter(|f| files.iter().any(|x| x == *f)) {
        r.get(f).map_err(|e| format!("{id}/{f}: {e}"))?;
    }
    let weights: Vec<&String> = files.iter().filter(|f| f.ends_with(".safetensors") && !f.contains('/')).collect();
    if weights.is_empty() {
        return Err(format!("{id} has neither GGUF nor safetensors weights"));
    }
    if files.iter().any(|f| f == "model.safetensors.index.json") {
        r.get("model.safetensors.index.json").map_err(|e| format!("{id}: {e}"))?;
    }
    for w in weights {
        r.get(w).map_err(|e| format!("{id}/{w}: {e}"))?;
    }
    folder.ok_or_else(|| format!("{id}: no files"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<String> {
        ["README.md", "m.Q4_0.gguf", "m.Q4_K_M.gguf", "m.Q8_0.gguf"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gguf_selector_by_name_or_quant() {
        assert_eq!(pick_gguf(&files(), Some("q4_k_m")).expect("quant"), "m.Q4_K_M.gguf");
        assert_eq!(pick_gguf(&files(), Some("m.Q8_0.gguf")).expect("name"), "m.Q8_0.gguf");
        let e = pick_gguf(&files(), None).expect_err("ambiguous");
        assert!(e.contains("--gguf-file"));
        assert!(pick_gguf(&files(), Some("Q5")).is_err());
        assert_eq!(pick_gguf(&["only.gguf".to_string()], None).expect("single"), "only.gguf");
    }
}
