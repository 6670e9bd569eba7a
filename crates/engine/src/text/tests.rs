//! Unit tests of `TextProcessor` on tiny vocabularies built in memory (no files).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};

use super::{byte_level, ChatMessage, TextProcessor};
use crate::EngineError;

const IM_START: u32 = 256;
const IM_END: u32 = 257;
const EOT: u32 = 258;

/// A byte-level vocabulary: the 256 byte characters, three control tokens, and a few merges
/// ("h e" -> "he", "he llo"...; "Ġ w" -> "Ġw"; "1 2" -> "12").
fn byte_level_content(pre: &str, template: Option<&str>) -> Content {
    let mut tokens: Vec<String> = byte_level::byte_to_char().iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i32; 256];
    for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    let merges = ["h e", "l l", "ll o", "he llo", "Ġ w", "1 2"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut md = HashMap::new();
    md.insert("general.architecture".into(), Value::String("llama".into()));
    md.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    md.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    md.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect()));
    md.insert("tokenizer.ggml.merges".into(), strings(merges.iter().map(|s| s.to_string()).collect()));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(IM_START));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(IM_END));
    md.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(EOT));
    md.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    if let Some(t) = template {
        md.insert("tokenizer.chat_template".into(), Value::String(t.into()));
    }
    Content { magic: VersionedMagic::GgufV3, metadata: md, tensor_infos: HashMap::new(), tensor_data_offset: 0 }
}

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", "hello")]
}

#[test]
fn special_token_text_encodes_to_its_id_with_no_prefix_space_after_it() {
    let text = TextProcessor::from_gguf(&byte_level_content("smollm", None), None).unwrap();
    let ids = text.encode("<|im_start|>hello world<|im_end|>", false).unwrap();
    let hello = text.encode("hello", false).unwrap();
    assert_eq!(hello.len(), 1, "the merges make 'hello' one token");
    // "hello" directly after the special token is the same single token, not "Ġhello".
    assert_eq!(ids[0], IM_START);
    assert_eq!(ids[1], hello[0]);
    assert_eq!(*ids.last().unwrap(), IM_END);
    assert_eq!(text.decode(&ids, false).unwrap(), "<|im_start|>hello world<|im_end|>");
    assert_eq!(text.decode(&ids, true).unwrap(), "hello world");
}

#[test]
fn smollm_pre_tokenizer_isolates_digits_and_gpt2_does_not_split_them() {
    let smollm = TextProcessor::from_gguf(&byte_level_content("smollm", None), None).unwrap();
    let gpt2 = TextProcessor::from_gguf(&byte_level_content("gpt2", None), None).unwrap();
    let twelve = gpt2.encode("12", false).unwrap();
    assert_eq!(twelve.len(), 1, "GPT-2's regex keeps digits together, so the merge applies");
    let s = "x 123";
    let isolated = smollm.encode(s, false).unwrap();
    assert!(!isolated.contains(&twelve[0]), "smollm must split 1|2|3: {isolated:?}");
    assert_eq!(isolated.len(), 5, "x, space, 1, 2, 3");
    assert!(gpt2.encode(s, false).unwrap().contains(&twelve[0]));
    assert_eq!(smollm.decode(&isolated, false).unwrap(), s);
}

#[test]
fn bos_is_added_only_when_the_model_asks() {
    let mut content = byte_level_content("gpt2", None);
    let text = TextProcessor::from_gguf(&content, None).unwrap();
    assert_eq!(text.encode("hello", true).unwrap(), text.encode("hello", false).unwrap());
    content.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    let text = TextProcessor::from_gguf(&content, None).unwrap();
    assert_eq!(text.encode("hello", true).unwrap()[0], IM_START);
    // A template that writes BOS itself does not get a second one.
    let with_bos = TextProcessor::from_gguf(&content, Some("{{ bos_token }}{{ messages[0].content }}")).unwrap();
    let ids = with_bos.encode_chat(&conversation()).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == IM_START).count(), 1);
    assert_eq!(ids[0], IM_START);
    // One that does not gets one.
    let without = TextProcessor::from_gguf(&content, Some("{{ messages[0].content }}")).unwrap();
    assert_eq!(without.encode_chat(&conversation()).unwrap()[0], IM_START);
}

#[test]
fn chatml_is_the_fallback_and_an_override_wins_over_the_model_template() {
    let none = TextProcessor::from_gguf(&byte_level_content("gpt2", None), None).unwrap();
    assert_eq!(
        none.render_chat(&conversation(), true).unwrap(),
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let model = byte_level_content("gpt2", Some("MODEL {{ messages[0].content }}"));
    let own = TextProcessor::from_gguf(&model, None).unwrap();
    assert_eq!(own.render_chat(&conversation(), true).unwrap(), "MODEL hello");
    let over = TextProcessor::from_gguf(&model, Some("OVERRIDE {{ messages[0].content }}")).unwrap();
    assert_eq!(over.render_chat(&conversation(), true).unwrap(), "OVERRIDE hello");
}

#[test]
fn end_of_generation_set_holds_eos_eot_and_known_end_of_turn_tokens() {
    let text = TextProcessor::from_gguf(&byte_level_content("gpt2", None), None).unwrap();
    let eog = text.eog_token_ids();
    assert_eq!(eog[0], IM_END, "EOS first");
    assert!(eog.contains(&EOT), "declared eot (<|endoftext|>) too: {eog:?}");
    assert!(!eog.contains(&IM_START));
    assert_eq!(eog.len(), 2, "no duplicates: {eog:?}");
}

#[test]
fn token_text_gives_raw_bytes_of_byte_level_tokens() {
    let text = TextProcessor::from_gguf(&byte_level_content("gpt2", None), None).unwrap();
    let ids = text.encode("é", false).unwrap();
    assert_eq!(ids.len(), 2, "no merge for é: two byte tokens");
    let (display, bytes) = text.token_text(ids[0]);
    assert_eq!(bytes, vec![0xC3]);
    assert_eq!(display, "\u{FFFD}");
    assert_eq!(text.token_text(IM_START), ("<|im_start|>".to_string(), b"<|im_start|>".to_vec()));
    assert_eq!(text.token_text(u32::MAX), (String::new(), Vec::new()));
    assert_eq!(text.vocab_size(), 256 + 3 + 6);
}

#[test]
fn unsupported_tokenizer_model_or_pre_tokenizer_is_a_load_error() {
    let mut content = byte_level_content("gpt2", None);
    content.metadata.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    match TextProcessor::from_gguf(&content, None) {
        Err(EngineError::Tokenizer(m)) => assert!(m.contains("bert"), "{m}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    let content = byte_level_content("some-unknown-pre", None);
    match TextProcessor::from_gguf(&content, None) {
        Err(EngineError::Tokenizer(m)) => assert!(m.contains("some-unknown-pre"), "{m}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
}

#[test]
fn a_broken_template_override_is_a_load_error() {
    let content = byte_level_content("gpt2", None);
    assert!(matches!(TextProcessor::from_gguf(&content, Some("{% if %}")), Err(EngineError::Template(_))));
}

/// A Hugging Face folder with a tiny byte-level tokenizer.json, a list-form chat template and a
/// list of EOS ids in generation_config.json.
fn write_hf_dir(dir: &std::path::Path) {
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 4, "content": "<|eot|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"h": 0, "i": 1, "hi": 2, "<s>": 3, "<|eot|>": 4, "Ġ": 5, "Ã": 6, "©": 7},
                  "merges": ["h i"]}
    });
    let config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "<|eot|>"},
        "add_bos_token": true,
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}D:{{ messages[0].content }}{{ eos_token }}"}
        ]
    });
    let generation = serde_json::json!({"eos_token_id": [4, 1]});
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
}

#[test]
fn hf_folder_gives_tokenizer_default_template_bos_and_eos_list() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path());
    let text = TextProcessor::from_hf_dir(dir.path(), None).unwrap();
    assert_eq!(text.encode("hi é", true).unwrap(), vec![3, 2, 5, 6, 7]);
    assert_eq!(text.decode(&[2, 5, 6, 7], false).unwrap(), "hi é");
    assert_eq!(text.render_chat(&[ChatMessage::new("user", "hi")], true).unwrap(), "<s>D:hi<|eot|>");
    // The template writes <s>: encode_chat adds no second one.
    let ids = text.encode_chat(&[ChatMessage::new("user", "hi")]).unwrap();
    assert_eq!(ids, text.encode("<s>D:hi<|eot|>", false).unwrap());
    assert_eq!(ids.iter().filter(|&&i| i == 3).count(), 1, "{ids:?}");
    assert_eq!(text.eog_token_ids(), &[4, 1]);
    assert_eq!(text.token_text(6).1, vec![0xC3]);
    assert_eq!(text.vocab_size(), 8);
    let over = TextProcessor::from_hf_dir(dir.path(), Some("O{{ messages[0].content }}")).unwrap();
    assert_eq!(over.render_chat(&[ChatMessage::new("user", "x")], false).unwrap(), "Ox");
}

#[test]
fn hf_folder_without_tokenizer_json_is_a_tokenizer_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(TextProcessor::from_hf_dir(dir.path(), None), Err(EngineError::Tokenizer(_))));
}
