//! Real-model tokenizer and chat-template goldens. The goldens in tests/fixtures/ were produced
//! by an independent implementation (Hugging Face `tokenizers`/`transformers` in Python, see
//! tests/fixtures/record_text_goldens.py). The model paths come from WICK_TEST_MODEL_SMOLLM2 and
//! WICK_TEST_MODEL_GEMMA3; unset, a test prints a notice and returns.
//!
//! Also the text side of every architecture fixture in `shared/fixtures/archs/` (tiny random
//! models of each llama.cpp architecture carrying SmolLM2's tokenizer): it loads, encodes to
//! SmolLM2's golden ids, and picks its architecture's built-in template when the file's own is
//! removed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::quantized::gguf_file;
use serde_json::Value;
use wick_engine::model::GgufFile;
use wick_engine::text::{BuiltinTemplate, ChatMessage, TemplateSource, TextProcessor};

fn model_path(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("NOTICE: {var} is not set; skipping this real-model text test");
            None
        }
    }
}

/// Loads each model's text side once for all tests of this module (Gemma's takes seconds).
fn cached(var: &'static str, cell: &'static OnceLock<Option<TextProcessor>>) -> Option<&'static TextProcessor> {
    cell.get_or_init(|| model_path(var).map(|p| load(&p))).as_ref()
}

pub(crate) fn smollm2() -> Option<&'static TextProcessor> {
    static CELL: OnceLock<Option<TextProcessor>> = OnceLock::new();
    cached("WICK_TEST_MODEL_SMOLLM2", &CELL)
}

pub(crate) fn gemma3() -> Option<&'static TextProcessor> {
    static CELL: OnceLock<Option<TextProcessor>> = OnceLock::new();
    cached("WICK_TEST_MODEL_GEMMA3", &CELL)
}

fn load(path: &Path) -> TextProcessor {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = gguf_file::Content::read(&mut file).expect("read GGUF");
    TextProcessor::from_gguf(&content, None).expect("build text processor")
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read fixture")).expect("parse fixture")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn messages_of(v: &Value) -> Vec<ChatMessage> {
    v.as_array()
        .expect("messages")
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().expect("role"), m["content"].as_str().expect("content")))
        .collect()
}

/// Every golden string encodes to the golden ids, decodes back to itself, and the raw bytes of
/// its tokens (as logprobs report them) concatenate to the string's UTF-8.
fn check_goldens(text: &TextProcessor, golden: &Value) {
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8);
    for case in cases {
        let s = case["text"].as_str().expect("text");
        let want = ids_of(&case["ids"]);
        let got = text.encode(s, false).expect("encode");
        assert_eq!(got, want, "token ids of {s:?}");
        assert_eq!(text.decode(&got, false).expect("decode"), s, "decode(encode({s:?}))");
        let bytes: Vec<u8> = got.iter().flat_map(|&id| text.token_text(id).1).collect();
        assert_eq!(bytes, s.as_bytes(), "token bytes of {s:?}");
    }
}

fn check_chat(text: &TextProcessor, golden: &Value) {
    for chat in golden["chat"].as_array().expect("chat") {
        let messages = messages_of(&chat["messages"]);
        let add = chat["add_generation_prompt"].as_bool().expect("flag");
        let want = chat["rendered"].as_str().expect("rendered");
        assert_eq!(text.render_chat(&messages, add).expect("render"), want);
    }
}

#[test]
fn smollm2_tokenizer_matches_golden_ids() {
    let Some(text) = smollm2() else { return };
    check_goldens(text, &fixture("smollm2_text_goldens.json"));
    assert_eq!(text.vocab_size(), 49152);
}

#[test]
fn smollm2_chat_template_matches_reference_rendering() {
    let Some(text) = smollm2() else { return };
    let golden = fixture("smollm2_text_goldens.json");
    check_chat(text, &golden);
    // encode_chat = render + encode, and SmolLM2 asks for no BOS.
    let messages = messages_of(&golden["chat"][0]["messages"]);
    let rendered = text.render_chat(&messages, true).expect("render");
    let ids = text.encode_chat(&messages).expect("encode_chat");
    assert_eq!(ids, text.encode(&rendered, false).expect("encode"));
    assert_eq!(ids[0], 1, "<|im_start|>");
    assert_eq!(text.encode("Hi", true).expect("encode"), text.encode("Hi", false).expect("encode"));
}

#[test]
fn smollm2_ends_generation_at_im_end_and_endoftext() {
    let Some(text) = smollm2() else { return };
    let eog = text.eog_token_ids();
    assert_eq!(eog[0], 2, "EOS <|im_end|> first: {eog:?}");
    assert!(eog.contains(&0), "<|endoftext|>: {eog:?}");
    assert!(!eog.contains(&1), "<|im_start|> does not end generation");
    // Special tokens are skipped on request and kept otherwise.
    let ids = text.encode("<|im_start|>assistant\nHi<|im_end|>", false).expect("encode");
    assert_eq!(text.decode(&ids, true).expect("decode"), "assistant\nHi");
    assert_eq!(text.token_text(2).0, "<|im_end|>");
}

#[test]
fn gemma3_tokenizer_matches_golden_ids() {
    let Some(text) = gemma3() else { return };
    let golden = fixture("gemma3_text_goldens.json");
    check_goldens(text, &golden);
    assert_eq!(text.vocab_size(), 262144);
    let bos = ids_of(&golden["bos_added"]);
    assert_eq!(text.encode("Hello", true).expect("encode")[..1], bos[..]);
}

#[test]
fn gemma3_uses_the_shipped_template_with_a_single_bos_and_ends_at_end_of_turn() {
    let Some(text) = gemma3() else { return };
    let golden = fixture("gemma3_text_goldens.json");
    check_chat(text, &golden);
    let messages = messages_of(&golden["chat"][0]["messages"]);
    let ids = text.encode_chat(&messages).expect("encode_chat");
    assert_eq!(ids[0], 2, "<bos>");
    assert_ne!(ids[1], 2, "the template writes <bos>; none is added twice");
    let eog = text.eog_token_ids();
    assert_eq!(eog[0], 1, "<eos>: {eog:?}");
    assert!(eog.contains(&106), "<end_of_turn>: {eog:?}");
}

#[test]
fn gemma3_template_is_the_builtin_one() {
    let Some(text) = gemma3() else { return };
    assert_eq!(text.template_source(), TemplateSource::Builtin(BuiltinTemplate::Gemma3));
    let Some(smollm) = smollm2() else { return };
    assert_eq!(smollm.template_source(), TemplateSource::Model);
}

/// `shared/fixtures/archs/`: beside the repository in CI (`../shared`, seen from the checkout),
/// inside it in some worktrees, or where WICK_ARCH_FIXTURES points.
fn arch_fixtures_dir() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("WICK_ARCH_FIXTURES").map(PathBuf::from),
        Some(manifest.join("../../shared/fixtures/archs")),
        Some(manifest.join("../shared/fixtures/archs")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_dir());
    if found.is_none() {
        eprintln!("NOTICE: shared/fixtures/archs not found (set WICK_ARCH_FIXTURES); skipping the fixture text test");
    }
    found
}

/// The built-in template each fixture architecture gets without a template of its own. The
/// `llama` fixtures carry SmolLM2's vocabulary (ChatML tokens, no Llama 3 header tokens).
fn expected_builtin(arch: &str) -> BuiltinTemplate {
    match arch {
        "qwen2" => BuiltinTemplate::Qwen2,
        "qwen3" => BuiltinTemplate::Qwen3,
        "gemma3" => BuiltinTemplate::Gemma3,
        "phi3" => BuiltinTemplate::Phi3,
        "gpt-oss" => BuiltinTemplate::Harmony,
        "llama" => BuiltinTemplate::ChatMl,
        other => panic!("a fixture of an architecture this test does not know: {other}"),
    }
}

#[test]
fn every_arch_fixture_loads_its_text_side_and_picks_its_architectures_template() {
    let Some(dir) = arch_fixtures_dir() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "fixtures in {}: {files:?}", dir.display());
    let golden = fixture("smollm2_text_goldens.json");
    let mut archs = std::collections::BTreeSet::new();
    for path in &files {
        let name = path.display();
        let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // wick's reader: candle's stops at gpt-oss's MXFP4 tensors (type 39).
        let mut content = GgufFile::read(&mut file).unwrap_or_else(|e| panic!("{name}: {e}")).content;
        let arch = content.metadata["general.architecture"].to_string().expect("arch").clone();
        archs.insert(arch.clone());

        let text = TextProcessor::from_gguf(&content, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        // SmolLM2's ChatML is not harmony: gpt-oss gets its built-in renderer even so.
        let own =
            if arch == "gpt-oss" { TemplateSource::Builtin(BuiltinTemplate::Harmony) } else { TemplateSource::Model };
        assert_eq!(text.template_source(), own, "{name} carries SmolLM2's template");
        assert_eq!(text.vocab_size(), 49152, "{name}");
        // SmolLM2's tokenizer: its golden ids, round trips, raw token bytes.
        check_goldens(&text, &golden);
        let eog = text.eog_token_ids();
        assert!(eog.contains(&2) && eog.contains(&0), "{name}: <|im_end|> and <|endoftext|> end generation: {eog:?}");

        // Without its own template the file gets its architecture's built-in, which renders a
        // chat that encodes and decodes back to the rendering.
        content.metadata.remove("tokenizer.chat_template");
        let text = TextProcessor::from_gguf(&content, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = expected_builtin(&arch);
        assert_eq!(text.template_source(), TemplateSource::Builtin(want), "{name} ({arch})");
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "What is 12+30?"),
            ChatMessage::new("assistant", "42."),
            ChatMessage::new("user", "Merci, et ça ? 日本"),
        ];
        let rendered = text.render_chat(&messages, true).unwrap_or_else(|e| panic!("{name} ({want}): {e}"));
        assert!(rendered.contains("Merci, et ça ? 日本"), "{name}: {rendered:?}");
        let ids = text.encode_chat(&messages).expect("encode_chat");
        let (bos, add_bos) = text.bos();
        let body = if add_bos && ids.first() == bos.as_ref() { &ids[1..] } else { &ids[..] };
        assert_eq!(text.decode(body, false).expect("decode"), rendered, "{name} ({want})");
    }
    for arch in ["llama", "qwen2", "qwen3", "gemma3", "phi3", "gpt-oss"] {
        assert!(archs.contains(arch), "no {arch} fixture in {}", dir.display());
    }
}
