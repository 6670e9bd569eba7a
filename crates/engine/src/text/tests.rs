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
    let gpt2 = TextProcessor::from_gguf(&byte_level_content("gpt-2", None), None).unwrap();
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
    let mut content = byte_level_content("gpt-2", None);
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
    let none = TextProcessor::from_gguf(&byte_level_content("gpt-2", None), None).unwrap();
    assert_eq!(
        none.render_chat(&conversation(), true).unwrap(),
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let model = byte_level_content("gpt-2", Some("MODEL {{ messages[0].content }}"));
    let own = TextProcessor::from_gguf(&model, None).unwrap();
    assert_eq!(own.render_chat(&conversation(), true).unwrap(), "MODEL hello");
    let over = TextProcessor::from_gguf(&model, Some("OVERRIDE {{ messages[0].content }}")).unwrap();
    assert_eq!(over.render_chat(&conversation(), true).unwrap(), "OVERRIDE hello");
}

#[test]
fn end_of_generation_set_holds_eos_eot_and_known_end_of_turn_tokens() {
    let text = TextProcessor::from_gguf(&byte_level_content("gpt-2", None), None).unwrap();
    let eog = text.eog_token_ids();
    assert_eq!(eog[0], IM_END, "EOS first");
    assert!(eog.contains(&EOT), "declared eot (<|endoftext|>) too: {eog:?}");
    assert!(!eog.contains(&IM_START));
    assert_eq!(eog.len(), 2, "no duplicates: {eog:?}");
}

#[test]
fn token_text_gives_raw_bytes_of_byte_level_tokens() {
    let text = TextProcessor::from_gguf(&byte_level_content("gpt-2", None), None).unwrap();
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
    let mut content = byte_level_content("gpt-2", None);
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
    let content = byte_level_content("gpt-2", None);
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

/// A byte-level vocabulary like [`byte_level_content`]'s, for architecture `arch`, with the
/// given control tokens (ids 256..), EOS = the first of them, and no chat template.
fn family_content(arch: &str, pre: &str, specials: &[&str]) -> Content {
    let mut c = byte_level_content(pre, None);
    let mut tokens: Vec<String> = byte_level::byte_to_char().iter().map(|c| c.to_string()).collect();
    tokens.extend(specials.iter().map(|s| s.to_string()));
    let types: Vec<Value> = (0..tokens.len()).map(|i| Value::I32(if i < 256 { 1 } else { 3 })).collect();
    let md = &mut c.metadata;
    md.insert("general.architecture".into(), Value::String(arch.into()));
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect()));
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    md.insert("tokenizer.ggml.merges".into(), Value::Array(vec![]));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(256));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(256));
    md.remove("tokenizer.ggml.eot_token_id");
    c
}

fn id_of(text: &TextProcessor, token: &str) -> u32 {
    let ids = text.encode(token, false).unwrap();
    assert_eq!(ids.len(), 1, "{token} is one token");
    ids[0]
}

fn eog_names(text: &TextProcessor) -> Vec<String> {
    let mut names: Vec<String> = text.eog_token_ids().iter().map(|&id| text.token_text(id).0).collect();
    names.sort();
    names
}

#[test]
fn files_without_a_template_get_their_architectures_builtin() {
    use super::{BuiltinTemplate as B, TemplateSource as S};
    let cases: &[(&str, &[&str], B)] = &[
        ("llama", &["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|eot_id|>"], B::Llama3),
        ("llama", &["</s>", "<s>", "[INST]", "[/INST]"], B::Mistral),
        ("llama", &["<|im_end|>", "<|im_start|>"], B::ChatMl),
        ("llama", &["</s>", "<s>"], B::ChatMl),
        ("qwen2", &["<|im_end|>", "<|im_start|>"], B::Qwen2),
        ("qwen3", &["<|im_end|>", "<|im_start|>"], B::Qwen3),
        ("phi3", &["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"], B::Phi3),
        ("gemma3", &["<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], B::Gemma3),
        ("gpt-oss", &["<|return|>"], B::Harmony),
    ];
    for (arch, specials, want) in cases {
        let text = TextProcessor::from_gguf(&family_content(arch, "gpt-2", specials), None).unwrap();
        assert_eq!(text.template_source(), S::Builtin(*want), "{arch} {specials:?}");
        assert_eq!(text.chat_template().source(), want.source());
    }
    // The file's own template and an override win over the built-in.
    let mut c = family_content("qwen3", "qwen2", &["<|im_end|>"]);
    c.metadata.insert("tokenizer.chat_template".into(), Value::String("OWN".into()));
    assert_eq!(TextProcessor::from_gguf(&c, None).unwrap().template_source(), S::Model);
    assert_eq!(TextProcessor::from_gguf(&c, Some("X")).unwrap().template_source(), S::Override);
}

#[test]
fn each_family_ends_generation_at_its_end_of_turn_tokens() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        // (arch, vocabulary specials with EOS first, expected EOG set)
        (
            "llama",
            &[
                "<|end_of_text|>",
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
                "<|eom_id|>",
            ],
            &["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        ),
        ("llama", &["</s>", "<s>", "[INST]", "[/INST]"], &["</s>"]),
        ("qwen2", &["<|im_end|>", "<|im_start|>", "<|endoftext|>"], &["<|endoftext|>", "<|im_end|>"]),
        ("phi3", &["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"], &["<|endoftext|>", "<|end|>"]),
        ("gemma3", &["<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], &["<end_of_turn>", "<eos>"]),
        // gpt-oss: <|end|> ends a message, not the generation, when <|return|> and <|call|> exist.
        ("gpt-oss", &["<|return|>", "<|start|>", "<|end|>", "<|call|>"], &["<|call|>", "<|return|>"]),
    ];
    for (arch, specials, want) in cases {
        let text = TextProcessor::from_gguf(&family_content(arch, "gpt-2", specials), None).unwrap();
        assert_eq!(eog_names(&text), *want, "{arch} {specials:?}");
        assert_eq!(text.eog_token_ids()[0], 256, "EOS first");
    }
}

#[test]
fn declared_eot_and_eom_ids_count_and_out_of_range_ones_are_dropped() {
    let mut c = family_content("llama", "llama-bpe", &["<|end_of_text|>", "<|begin_of_text|>", "<my_eot>", "<my_eom>"]);
    c.metadata.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(258));
    c.metadata.insert("tokenizer.ggml.eom_token_id".into(), Value::U32(259));
    let text = TextProcessor::from_gguf(&c, None).unwrap();
    assert_eq!(text.eog_token_ids(), &[256, 258, 259]);
    c.metadata.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(100_000));
    let text = TextProcessor::from_gguf(&c, None).unwrap();
    assert_eq!(text.eog_token_ids(), &[256, 259]);
}

#[test]
fn an_end_of_turn_name_that_is_plain_text_in_the_vocabulary_does_not_end_generation() {
    let mut c = family_content("llama", "llama-bpe", &["<|end_of_text|>", "<|eot_id|>"]);
    // Make <|eot_id|> (id 257) a normal token.
    if let Some(Value::Array(types)) = c.metadata.get_mut("tokenizer.ggml.token_type") {
        types[257] = Value::I32(1);
    }
    let text = TextProcessor::from_gguf(&c, None).unwrap();
    assert_eq!(text.eog_token_ids(), &[256]);
}

#[test]
fn llama3_and_tekken_add_bos_unless_the_file_says_otherwise() {
    for (pre, default_bos) in [("llama-bpe", true), ("tekken", true), ("qwen2", false), ("smollm", false)] {
        let mut c = family_content("llama", pre, &["<|end_of_text|>", "<|begin_of_text|>"]);
        c.metadata.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(257));
        c.metadata.remove("tokenizer.ggml.add_bos_token");
        let text = TextProcessor::from_gguf(&c, None).unwrap();
        assert_eq!(text.bos(), (Some(257), default_bos), "{pre}");
        c.metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(!default_bos));
        assert_eq!(TextProcessor::from_gguf(&c, None).unwrap().bos().1, !default_bos, "{pre} with the key");
    }
}

#[test]
fn an_unknown_pre_tokenizer_is_named_with_the_supported_ones_and_a_missing_one_means_default() {
    match TextProcessor::from_gguf(&byte_level_content("gpt2", None), None) {
        Err(EngineError::Tokenizer(m)) => {
            assert!(m.contains("\"gpt2\""), "{m}");
            assert!(m.contains("gpt-2") && m.contains("llama-bpe") && m.contains("tekken"), "{m}");
        }
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    let mut c = byte_level_content("gpt-2", None);
    c.metadata.remove("tokenizer.ggml.pre");
    let text = TextProcessor::from_gguf(&c, None).unwrap();
    // llama.cpp's default set keeps "12" in one piece, so the "1 2" merge applies.
    assert_eq!(text.encode("12", false).unwrap().len(), 1);
    assert_eq!(text.decode(&text.encode("x 12345, y", false).unwrap(), false).unwrap(), "x 12345, y");
}

#[test]
fn extra_template_variables_reach_the_template_and_reserved_names_are_refused() {
    let text =
        TextProcessor::from_gguf(&family_content("qwen3", "qwen2", &["<|im_end|>", "<|im_start|>"]), None).unwrap();
    let msgs = conversation();
    let plain = text.render_chat(&msgs, true).unwrap();
    assert_eq!(plain, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    let off = text.render_chat_with(&msgs, true, &serde_json::json!({"enable_thinking": false})).unwrap();
    assert_eq!(off, format!("{plain}<think>\n\n</think>\n\n"));
    assert_eq!(text.render_chat_with(&msgs, true, &serde_json::Value::Null).unwrap(), plain);
    for bad in [
        serde_json::json!({"messages": []}),
        serde_json::json!({"add_generation_prompt": false}),
        serde_json::json!([1]),
    ] {
        match text.render_chat_with(&msgs, true, &bad) {
            Err(EngineError::Template(m)) => assert!(!m.is_empty()),
            other => panic!("{bad}: expected a template error, got {other:?}"),
        }
    }
}

/// A tiny SentencePiece vocabulary with Phi-3's special tokens.
fn spm_content(arch: &str) -> Content {
    let tokens = [
        "<unk>",
        "<s>",
        "</s>",
        "<|endoftext|>",
        "<|user|>",
        "<|end|>",
        "<0x0A>",
        "\u{2581}",
        "H",
        "i",
        "Hi",
        "\u{2581}Hi",
    ];
    let types = [2, 3, 3, 3, 3, 3, 6, 1, 1, 1, 1, 1];
    let scores: Vec<Value> = (0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect();
    let mut md = HashMap::new();
    md.insert("general.architecture".into(), Value::String(arch.into()));
    md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    md.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| Value::String(t.to_string())).collect()),
    );
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types.iter().map(|&t| Value::I32(t)).collect()));
    md.insert("tokenizer.ggml.scores".into(), Value::Array(scores));
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(3));
    Content { magic: VersionedMagic::GgufV3, metadata: md, tensor_infos: HashMap::new(), tensor_data_offset: 0 }
}

#[test]
fn phi3_special_tokens_swallow_the_whitespace_after_them_as_its_tokenizer_json_says() {
    let phi3 = TextProcessor::from_gguf(&spm_content("phi3"), None).unwrap();
    let llama = TextProcessor::from_gguf(&spm_content("llama"), None).unwrap();
    let newline = 6;
    let ids = phi3.encode("<|user|>\nHi<|end|>\n", false).unwrap();
    assert_eq!(ids[0], id_of(&phi3, "<|user|>"));
    assert!(!ids.contains(&newline), "the newlines after <|user|> and <|end|> are absorbed: {ids:?}");
    assert!(llama.encode("<|user|>\nHi<|end|>\n", false).unwrap().contains(&newline));
    // <|endoftext|> (like <s> and <unk>) keeps the whitespace after it.
    assert!(phi3.encode("<|endoftext|>\nHi", false).unwrap().contains(&newline));
    // Phi-3 keeps </s> as a control token; llama.cpp ends generation at it too.
    assert_eq!(eog_names(&phi3), ["</s>", "<|endoftext|>", "<|end|>"]);
    assert_eq!(phi3.template_source(), super::TemplateSource::Builtin(super::BuiltinTemplate::Phi3));
}

#[test]
fn hf_folder_without_a_template_gets_its_model_types_builtin() {
    let dir = tempfile::tempdir().unwrap();
    write_hf_dir(dir.path());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap()).unwrap();
    let mut config = config.as_object().unwrap().clone();
    config.remove("chat_template");
    std::fs::write(dir.path().join("tokenizer_config.json"), serde_json::Value::Object(config).to_string()).unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "qwen3"}"#).unwrap();
    let text = TextProcessor::from_hf_dir(dir.path(), None).unwrap();
    assert_eq!(text.template_source(), super::TemplateSource::Builtin(super::BuiltinTemplate::Qwen3));
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gemma3_text"}"#).unwrap();
    let text = TextProcessor::from_hf_dir(dir.path(), None).unwrap();
    assert_eq!(text.template_source(), super::TemplateSource::Builtin(super::BuiltinTemplate::Gemma3));
}
