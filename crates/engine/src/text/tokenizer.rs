//! The tokenizer type the text side uses: Hugging Face `tokenizers`' pipeline (normalizer,
//! pre-tokenizer, added tokens, decoder) around either a model read from `tokenizer.json` or
//! wick's compact [`Bpe`] for vocabularies read from GGUF metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{Model, Token, TokenizerImpl};

use super::bpe::Bpe;

/// The tokenizer of a loaded model.
pub(crate) type TextTokenizer =
    TokenizerImpl<TextModel, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// The vocabulary model inside a [`TextTokenizer`].
#[derive(Debug, Clone)]
pub(crate) enum TextModel {
    /// From a `tokenizer.json` (any model kind `tokenizers` reads).
    Hf(ModelWrapper),
    /// From GGUF metadata.
    Gguf(Bpe),
}

impl<'de> Deserialize<'de> for TextModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ModelWrapper::deserialize(d).map(TextModel::Hf)
    }
}

impl Model for TextModel {
    type Trainer = TrainerWrapper;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        match self {
            Self::Hf(m) => m.tokenize(sequence),
            Self::Gguf(m) => m.tokenize(sequence),
        }
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Hf(m) => m.token_to_id(token),
            Self::Gguf(m) => m.token_to_id(token),
        }
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Self::Hf(m) => m.id_to_token(id),
            Self::Gguf(m) => m.id_to_token(id),
        }
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        match self {
            Self::Hf(m) => m.get_vocab(),
            Self::Gguf(m) => m.get_vocab(),
        }
    }

    fn get_vocab_size(&self) -> usize {
        match self {
            Self::Hf(m) => m.get_vocab_size(),
            Self::Gguf(m) => m.get_vocab_size(),
        }
    }

    fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        match self {
            Self::Hf(m) => m.save(folder, prefix),
            Self::Gguf(m) => m.save(folder, prefix),
        }
    }

    fn get_trainer(&self) -> TrainerWrapper {
        match self {
            Self::Hf(m) => m.get_trainer(),
            Self::Gguf(m) => m.get_trainer().into(),
        }
    }
}
