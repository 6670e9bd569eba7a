//! `POST /v1/embeddings`: validate, put the instruction prompt (`prompt_name`, else the model's
//! default prompt) before each text, tokenize (texts) on the CPU pool, check every input against
//! the model's length and vocabulary (a 400 naming the input's index), hand all inputs to the
//! model's embedding thread as one job (it batches them with other requests' inputs), and
//! answer in OpenAI's shape, as floats or base64 (little-endian f32, as the SDKs decode it).

use std::sync::Arc;

use axum::extract::State;
use axum::Json as JsonOut;
use base64::Engine as _;

use crate::error::ApiError;
use crate::extract::Json;
use crate::openai::embeddings::{
    Embedding, EmbeddingInput, EmbeddingList, EmbeddingRequest, EmbeddingUsage, EmbeddingVector,
};
use crate::state::AppState;

/// OpenAI's limit on inputs per request.
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Float,
    Base64,
}

fn format(f: Option<&str>) -> Result<Format, ApiError> {
    match f {
        None | Some("float") => Ok(Format::Float),
        Some("base64") => Ok(Format::Base64),
        Some(other) => Err(ApiError::invalid_value(
            "encoding_format",
            format!("`encoding_format` must be `float` or `base64`, got {other:?}."),
        )),
    }
}

/// The width to answer with: the model's own, or for a Matryoshka model any smaller one.
fn dimensions(asked: Option<i64>, width: usize, matryoshka: bool) -> Result<usize, ApiError> {
    match asked {
        None => Ok(width),
        Some(d) if d == width as i64 => Ok(width),
        Some(d) if matryoshka && d >= 1 && d < width as i64 => Ok(d as usize),
        Some(d) if matryoshka => Err(ApiError::invalid_value(
            "dimensions",
            format!("`dimensions` must be between 1 and {width} for this model, got {d}."),
        )),
        Some(d) => Err(ApiError::unsupported(
            "dimensions",
            format!(
                "This model's embeddings are {width} wide and it was not trained to be truncated (it is not a \
                 Matryoshka model): `dimensions` must be {width} or left out, got {d}."
            ),
        )),
    }
}

fn too_long(i: usize, n: usize, max: usize) -> ApiError {
    let mut e = ApiError::invalid(
        Some("input"),
        format!("Input {i} has {n} tokens, more than this model's maximum input length of {max} tokens."),
    );
    e.code = Some("context_length_exceeded");
    e
}

fn empty(i: usize) -> ApiError {
    ApiError::invalid_value("input", format!("Input {i} is empty; every input must hold at least one token."))
}

/// Little-endian f32 bytes, base64-encoded.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates embedding vectors for the inputs, in input order.
#[utoipa::path(post, path = "/v1/embeddings", tag = "OpenAI", request_body = EmbeddingRequest,
    responses((status = 200, description = "One embedding per input, in input order", body = EmbeddingList)))]
pub async fn handler(
    State(state): State<Arc<AppState>>,
    Json(req): Json<EmbeddingRequest>,
) -> Result<JsonOut<EmbeddingList>, ApiError> {
    let model = state.embedding(&req.model).await?;
    let info = model.embedder.info().clone();
    let format = format(req.encoding_format.as_deref())?;
    let dims = dimensions(req.dimensions, info.dim, model.matryoshka)?;
    let (texts, ids) = match req.input {
        EmbeddingInput::Text(s) => (Some(vec![s]), None),
        EmbeddingInput::Texts(v) => (Some(v), None),
        EmbeddingInput::Tokens(v) => (None, Some(vec![v])),
        EmbeddingInput::TokenLists(v) => (None, Some(v)),
    };
    let prompt = match (&req.prompt_name, &texts) {
        (Some(_), None) => {
            return Err(ApiError::invalid_value(
                "prompt_name",
                "`prompt_name` applies to text inputs; token ids are embedded as given.",
            ))
        }
        (_, None) => String::new(),
        (name, Some(_)) => {
            info.prompt(name.as_deref()).map_err(|m| ApiError::invalid_value("prompt_name", m + "."))?.to_owned()
        }
    };
    let count = texts.as_ref().map_or(0, Vec::len) + ids.as_ref().map_or(0, Vec::len);
    if count == 0 {
        return Err(ApiError::invalid_value("input", "`input` must not be an empty list."));
    }
    if count > MAX_INPUTS {
        return Err(ApiError::invalid_value(
            "input",
            format!("`input` may hold at most {MAX_INPUTS} inputs, got {count}."),
        ));
    }
    let ids = match (texts, ids) {
        (Some(texts), _) => {
            if let Some(i) = texts.iter().position(String::is_empty) {
                return Err(empty(i));
            }
            let bytes: usize = texts.iter().map(String::len).sum();
            let m = model.clone();
            state
                .cpu
                .run(bytes, move || {
                    texts.iter().map(|t| m.embedder.tokenize(&format!("{prompt}{t}"))).collect::<Result<Vec<_>, _>>()
                })
                .await?
                .map_err(super::text_error)?
        }
        (None, Some(ids)) => ids,
        (None, None) => Vec::new(),
    };
    for (i, seq) in ids.iter().enumerate() {
        if seq.is_empty() {
            return Err(empty(i));
        }
        if seq.len() > info.max_len {
            return Err(too_long(i, seq.len(), info.max_len));
        }
        if let Some(bad) = seq.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(ApiError::invalid_value(
                "input",
                format!("Input {i} holds token id {bad}, outside this model's vocabulary of {}.", info.vocab_size),
            ));
        }
    }
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let rx = model.embedder.submit(ids)?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::internal("The embedding engine stopped before answering."))?
        .map_err(|e| ApiError::internal(format!("The embedding forward failed: {e}")))?;
    crate::metrics::record_embeddings(&model.name, vectors.len(), tokens);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, mut v)| {
            if dims < v.len() {
                v.truncate(dims);
                wick_engine::embed::normalize(&mut v);
            }
            let embedding = match format {
                Format::Float => EmbeddingVector::Float(v),
                Format::Base64 => EmbeddingVector::Base64(base64_f32(&v)),
            };
            Embedding { object: "embedding", embedding, index }
        })
        .collect();
    Ok(JsonOut(EmbeddingList {
        object: "list",
        data,
        model: req.model,
        usage: EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_only_truncate_matryoshka_models() {
        assert_eq!(dimensions(None, 384, false).expect("default"), 384);
        assert_eq!(dimensions(Some(384), 384, false).expect("own width"), 384);
        assert_eq!(dimensions(Some(128), 384, false).expect_err("fixed").code, Some("unsupported_parameter"));
        assert_eq!(dimensions(Some(128), 384, true).expect("matryoshka"), 128);
        assert!(dimensions(Some(0), 384, true).is_err());
        assert!(dimensions(Some(385), 384, true).is_err());
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let s = base64_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).expect("decodes");
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
