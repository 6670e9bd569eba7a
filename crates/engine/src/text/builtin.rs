//! Built-in chat templates for model files that carry none (a GGUF without
//! `tokenizer.chat_template`, a Hugging Face folder without a template), and the one place that
//! picks one from the architecture (`general.architecture` / `config.json` `model_type`).
//!
//! Each template is the model family's official one, copied verbatim into `templates/*.jinja`
//! (tool branches included; they only render when the caller passes `tools` and tool messages):
//!
//! | built-in | source |
//! | --- | --- |
//! | `llama3` | `tokenizer_config.json` of Llama 3.1 / 3.3 Instruct (header format, `<\|eot_id\|>`, a system header with "Cutting Knowledge Date" and `date_string`, default "26 Jul 2024") |
//! | `mistral` | `tokenizer_config.json` of Mistral-7B-Instruct-v0.3 (`[INST] … [/INST]`; the system message goes before the *last* user message, as mistral-common's v3 tokenizer does) |
//! | `qwen2` | `tokenizer_config.json` of Qwen2.5 Instruct (ChatML, default system "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") |
//! | `qwen3` | `tokenizer_config.json` of Qwen3 (ChatML; `<think>` stripped from assistant turns before the last user query; `enable_thinking=false` pre-fills an empty think block) |
//! | `phi3` | `tokenizer_config.json` of Phi-3.5-mini-instruct (same as the updated Phi-3-mini: `<\|user\|>\n…<\|end\|>\n<\|assistant\|>\n`) |
//! | `gemma3` | `tokenizer_config.json` of Gemma 3 (system folded into the first user turn, `model` role) |
//! | `harmony` | wick's own renderer of OpenAI's harmony format (gpt-oss), written from the format's description (system message with `Reasoning:` from `reasoning_effort`, developer message with the instructions and the `functions` namespace from `tools`, tool results as messages from `functions.NAME`); also used for a gpt-oss file whose own template does not speak harmony |
//! | `chatml` | generic ChatML, the last resort |

use super::template::CHATML_TEMPLATE;

/// A chat template shipped with wick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinTemplate {
    ChatMl,
    Llama3,
    Mistral,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma3,
    Harmony,
}

impl BuiltinTemplate {
    pub const ALL: [BuiltinTemplate; 8] = [
        BuiltinTemplate::ChatMl,
        BuiltinTemplate::Llama3,
        BuiltinTemplate::Mistral,
        BuiltinTemplate::Qwen2,
        BuiltinTemplate::Qwen3,
        BuiltinTemplate::Phi3,
        BuiltinTemplate::Gemma3,
        BuiltinTemplate::Harmony,
    ];

    /// The name, which is also the file name under `templates/` (without `.jinja`).
    pub fn name(self) -> &'static str {
        match self {
            BuiltinTemplate::ChatMl => "chatml",
            BuiltinTemplate::Llama3 => "llama3",
            BuiltinTemplate::Mistral => "mistral",
            BuiltinTemplate::Qwen2 => "qwen2",
            BuiltinTemplate::Qwen3 => "qwen3",
            BuiltinTemplate::Phi3 => "phi3",
            BuiltinTemplate::Gemma3 => "gemma3",
            BuiltinTemplate::Harmony => "harmony",
        }
    }

    /// The Jinja source.
    pub fn source(self) -> &'static str {
        match self {
            BuiltinTemplate::ChatMl => CHATML_TEMPLATE,
            BuiltinTemplate::Llama3 => include_str!("templates/llama3.jinja"),
            BuiltinTemplate::Mistral => include_str!("templates/mistral.jinja"),
            BuiltinTemplate::Qwen2 => include_str!("templates/qwen2.jinja"),
            BuiltinTemplate::Qwen3 => include_str!("templates/qwen3.jinja"),
            BuiltinTemplate::Phi3 => include_str!("templates/phi3.jinja"),
            BuiltinTemplate::Gemma3 => super::template::GEMMA3_TEMPLATE,
            BuiltinTemplate::Harmony => include_str!("templates/harmony.jinja"),
        }
    }

    /// The built-in for a model of architecture `arch` (GGUF `general.architecture` or HF
    /// `model_type`) whose vocabulary holds the tokens for which `has_token` is true.
    ///
    /// The `llama` architecture is shared by Llama 2, Llama 3, SmolLM2 and Mistral files, so the
    /// vocabulary decides there: Llama 3's header tokens, else Mistral's `[INST]`, else ChatML.
    /// Anything unknown gets ChatML.
    pub fn for_model(arch: &str, has_token: impl Fn(&str) -> bool) -> BuiltinTemplate {
        match arch {
            "llama" => {
                if has_token("<|eot_id|>") || has_token("<|start_header_id|>") {
                    BuiltinTemplate::Llama3
                } else if has_token("[INST]") {
                    BuiltinTemplate::Mistral
                } else {
                    BuiltinTemplate::ChatMl
                }
            }
            "mistral" => BuiltinTemplate::Mistral,
            "qwen2" => BuiltinTemplate::Qwen2,
            "qwen3" | "qwen3moe" | "qwen3_moe" => BuiltinTemplate::Qwen3,
            "phi3" => BuiltinTemplate::Phi3,
            "gemma" | "gemma2" | "gemma3" | "gemma3_text" => BuiltinTemplate::Gemma3,
            "gpt-oss" | "gpt_oss" => BuiltinTemplate::Harmony,
            _ => BuiltinTemplate::ChatMl,
        }
    }
}

impl std::fmt::Display for BuiltinTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a model's chat template came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource {
    /// The caller's override (`--chat-template`).
    Override,
    /// The model file's own template.
    Model,
    /// A template shipped with wick, chosen by [`BuiltinTemplate::for_model`].
    Builtin(BuiltinTemplate),
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateSource::Override => f.write_str("override"),
            TemplateSource::Model => f.write_str("model"),
            TemplateSource::Builtin(b) => write!(f, "built-in {b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Golden renderings of every built-in template. Each expected string was written by hand
    //! from the official template's code (the sources in the module docs), not produced by
    //! running our renderer, and cross-checked by rendering the same files with Python's
    //! Jinja2 3.1 (`trim_blocks`, `lstrip_blocks`, as `apply_chat_template` does). Same
    //! conversation for all: a system message, a user turn with
    //! surrounding whitespace (which shows who trims), an assistant answer and a second user
    //! turn, rendered with `add_generation_prompt`.

    use super::*;
    use crate::text::template::{ChatMessage, ChatTemplate};

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi there \n"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "What is 2+2?"),
        ]
    }

    fn render(b: BuiltinTemplate, bos: &str, eos: &str, messages: &[ChatMessage], gen: bool) -> String {
        let t = ChatTemplate::new(b.source(), bos, eos).unwrap_or_else(|e| panic!("{b} compiles: {e}"));
        t.render(messages, gen).unwrap_or_else(|e| panic!("{b} renders: {e}"))
    }

    fn render_with(b: BuiltinTemplate, messages: &[ChatMessage], gen: bool, extra: serde_json::Value) -> String {
        let t = ChatTemplate::new(b.source(), "", "").unwrap();
        t.render_with(messages, gen, &extra).unwrap()
    }

    #[test]
    fn every_builtin_compiles_and_is_named_after_its_file() {
        for b in BuiltinTemplate::ALL {
            ChatTemplate::new(b.source(), "<s>", "</s>").unwrap_or_else(|e| panic!("{b}: {e}"));
            assert!(!b.source().is_empty());
        }
        let names: Vec<&str> = BuiltinTemplate::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(names, ["chatml", "llama3", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "harmony"]);
    }

    /// Llama 3.1: BOS, then always a system header carrying the knowledge cutoff and
    /// `date_string` (default "26 Jul 2024") before the trimmed system message; every turn is
    /// `<|start_header_id|>role<|end_header_id|>\n\n` + trimmed content + `<|eot_id|>`.
    #[test]
    fn llama3_golden() {
        let got = render(BuiltinTemplate::Llama3, "<|begin_of_text|>", "<|eot_id|>", &conversation(), true);
        assert_eq!(
            got,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
             Be brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // No system message: the system header still comes, with an empty message; the date
        // is a template variable.
        let t = ChatTemplate::new(BuiltinTemplate::Llama3.source(), "<|begin_of_text|>", "").unwrap();
        let got = t
            .render_with(&[ChatMessage::new("user", "Hi")], false, &serde_json::json!({"date_string": "01 Jan 2025"}))
            .unwrap();
        assert_eq!(
            got,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
             Cutting Knowledge Date: December 2023\nToday Date: 01 Jan 2025\n\n<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        );
    }

    /// Mistral v0.3: BOS, `[INST] ` + content + `[/INST]` for users (not trimmed), " " +
    /// trimmed content + EOS for the assistant, the system message prepended (with a blank
    /// line) to the *last* user turn (`loop.last and system_message is defined`), and no
    /// generation prompt (the prompt already ends in `[/INST]`).
    #[test]
    fn mistral_golden() {
        let got = render(BuiltinTemplate::Mistral, "<s>", "</s>", &conversation(), true);
        assert_eq!(got, "<s>[INST]  Hi there \n[/INST] Hello!</s>[INST] Be brief.\n\nWhat is 2+2?[/INST]");
        // Roles must alternate after the optional system message.
        let t = ChatTemplate::new(BuiltinTemplate::Mistral.source(), "<s>", "</s>").unwrap();
        let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        let err = t.render(&bad, true).unwrap_err().to_string();
        assert!(err.contains("must alternate"), "{err}");
    }

    /// Qwen2.5: ChatML, no trimming, and Qwen's default system prompt when none is given.
    #[test]
    fn qwen2_golden() {
        let got = render(BuiltinTemplate::Qwen2, "", "<|im_end|>", &conversation(), true);
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\n Hi there \n<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let got = render(BuiltinTemplate::Qwen2, "", "<|im_end|>", &[ChatMessage::new("user", "Hi")], true);
        assert_eq!(
            got,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    /// Qwen3: ChatML with no default system prompt; the same conversation renders like Qwen2.5
    /// minus the default.
    #[test]
    fn qwen3_golden() {
        let got = render(BuiltinTemplate::Qwen3, "", "<|im_end|>", &conversation(), true);
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\n Hi there \n<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let got = render(BuiltinTemplate::Qwen3, "", "", &[ChatMessage::new("user", "Hi")], true);
        assert_eq!(got, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    /// Qwen3's thinking rules: an assistant turn before the last user query loses its
    /// `<think>…</think>` (content = the text after `</think>`, left-stripped of newlines);
    /// `enable_thinking=false` pre-fills an empty think block in the generation prompt; an
    /// assistant turn after the last query (a continuation) keeps its reasoning, re-wrapped.
    #[test]
    fn qwen3_strips_history_thinking_and_honours_enable_thinking() {
        let mut history = conversation();
        history[2] = ChatMessage::new("assistant", "<think>\nThe user greets me.\n</think>\n\nHello!");
        let want_history = "<|im_start|>system\nBe brief.<|im_end|>\n\
             <|im_start|>user\n Hi there \n<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n";
        assert_eq!(render_with(BuiltinTemplate::Qwen3, &history, true, serde_json::Value::Null), want_history);
        let off = render_with(BuiltinTemplate::Qwen3, &history, true, serde_json::json!({"enable_thinking": false}));
        assert_eq!(off, format!("{want_history}<think>\n\n</think>\n\n"));
        // enable_thinking=true is the default: nothing is pre-filled.
        let on = render_with(BuiltinTemplate::Qwen3, &history, true, serde_json::json!({"enable_thinking": true}));
        assert_eq!(on, want_history);

        let continuation =
            [ChatMessage::new("user", "Hi"), ChatMessage::new("assistant", "<think>\nhmm\n\n</think>\n\nHello!")];
        assert_eq!(
            render_with(BuiltinTemplate::Qwen3, &continuation, false, serde_json::Value::Null),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello!<|im_end|>\n"
        );
    }

    /// Phi-3.5: `<|role|>\n` + content + `<|end|>\n` per turn (an empty system message is
    /// skipped), `<|assistant|>\n` as the generation prompt, else EOS at the end.
    #[test]
    fn phi3_golden() {
        let got = render(BuiltinTemplate::Phi3, "<s>", "<|endoftext|>", &conversation(), true);
        assert_eq!(
            got,
            "<|system|>\nBe brief.<|end|>\n<|user|>\n Hi there \n<|end|>\n<|assistant|>\nHello!<|end|>\n\
             <|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n"
        );
        let msgs = [ChatMessage::new("system", ""), ChatMessage::new("user", "Hi")];
        let got = render(BuiltinTemplate::Phi3, "<s>", "<|endoftext|>", &msgs, false);
        assert_eq!(got, "<|user|>\nHi<|end|>\n<|endoftext|>");
    }

    /// Gemma 3: BOS, the system message folded into the first user turn with a blank line,
    /// `model` for the assistant, every content trimmed.
    #[test]
    fn gemma3_golden() {
        let got = render(BuiltinTemplate::Gemma3, "<bos>", "<eos>", &conversation(), true);
        assert_eq!(
            got,
            "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    /// ChatML (the fallback): every message as is.
    #[test]
    fn chatml_golden() {
        let got = render(BuiltinTemplate::ChatMl, "", "", &conversation(), true);
        assert_eq!(
            got,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi there \n<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn architecture_picks_the_builtin_and_llama_files_are_told_apart_by_their_vocabulary() {
        let none = |_: &str| false;
        for (arch, want) in [
            ("qwen2", BuiltinTemplate::Qwen2),
            ("qwen3", BuiltinTemplate::Qwen3),
            ("qwen3moe", BuiltinTemplate::Qwen3),
            ("phi3", BuiltinTemplate::Phi3),
            ("gemma3", BuiltinTemplate::Gemma3),
            ("gemma3_text", BuiltinTemplate::Gemma3),
            ("gemma2", BuiltinTemplate::Gemma3),
            ("mistral", BuiltinTemplate::Mistral),
            ("llama", BuiltinTemplate::ChatMl),
            ("gpt-oss", BuiltinTemplate::Harmony),
            ("gpt_oss", BuiltinTemplate::Harmony),
            ("", BuiltinTemplate::ChatMl),
        ] {
            assert_eq!(BuiltinTemplate::for_model(arch, none), want, "{arch}");
        }
        let vocab = |tokens: &'static [&'static str]| move |t: &str| tokens.contains(&t);
        let llama = |tokens: &'static [&'static str]| BuiltinTemplate::for_model("llama", vocab(tokens));
        assert_eq!(llama(&["<|begin_of_text|>", "<|eot_id|>"]), BuiltinTemplate::Llama3);
        assert_eq!(llama(&["<|start_header_id|>"]), BuiltinTemplate::Llama3);
        assert_eq!(llama(&["<s>", "</s>", "[INST]", "[/INST]"]), BuiltinTemplate::Mistral);
        assert_eq!(llama(&["<|im_start|>", "<|im_end|>"]), BuiltinTemplate::ChatMl);
        assert_eq!(llama(&["<s>", "</s>"]), BuiltinTemplate::ChatMl, "Llama 2: ChatML");
        // The vocabulary only matters for the shared llama architecture.
        assert_eq!(BuiltinTemplate::for_model("qwen2", vocab(&["<|eot_id|>"])), BuiltinTemplate::Qwen2);
    }

    /// Harmony (wick's own renderer, written from the format's description in the openai/harmony
    /// docs): system message with cutoff, date, reasoning effort and channels (plus the
    /// commentary line when there are tools); developer message with the instructions and the
    /// `functions` namespace (description comments, `?` for optional properties, enum unions,
    /// defaults); an earlier call as a commentary message to `functions.NAME` ending in
    /// `<|call|>`; its result from `functions.NAME` to the assistant; `<|start|>assistant`.
    #[test]
    fn harmony_golden() {
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(serde_json::json!([{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]));
        let mut result = ChatMessage::new("tool", "{\"temp\": 21}");
        result.name = Some("get_weather".into());
        result.tool_call_id = Some("c1".into());
        let messages =
            vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Weather in Paris?"), call, result];
        let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Current weather", "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                "days": {"type": "array", "items": {"type": "integer"}}},
            "required": ["city"]}}},
            {"type": "function", "function": {"name": "now", "description": ""}}]);
        let extra = serde_json::json!({"tools": tools, "reasoning_effort": "high", "current_date": "2025-06-28"});
        let got = render_with(BuiltinTemplate::Harmony, &messages, true, extra);
        assert_eq!(
            got,
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
             Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n\
             # Valid channels: analysis, commentary, final. Channel must be included for every message.\n\
             Calls to these tools must go to the commentary channel: 'functions'.<|end|>\
             <|start|>developer<|message|># Instructions\n\nBe brief.\n\n\
             # Tools\n\n## functions\n\nnamespace functions {\n\n\
             // Current weather\ntype get_weather = (_: {\n// City name\ncity: string,\n\
             days?: number[],\nunit?: \"c\" | \"f\", // default: c\n}) => any;\n\n\
             type now = () => any;\n\n} // namespace functions<|end|>\
             <|start|>user<|message|>Weather in Paris?<|end|>\
             <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>\
             {\"city\": \"Paris\"}<|call|>\
             <|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"temp\": 21}<|end|>\
             <|start|>assistant"
        );
        // No tools, no system message: no developer message; medium effort by default; earlier
        // answers on the final channel.
        let plain = vec![
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "2+2?"),
        ];
        let got =
            render_with(BuiltinTemplate::Harmony, &plain, true, serde_json::json!({"current_date": "2025-01-01"}));
        assert_eq!(
            got,
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
             Knowledge cutoff: 2024-06\nCurrent date: 2025-01-01\n\nReasoning: medium\n\n\
             # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
             <|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|>\
             <|start|>user<|message|>2+2?<|end|><|start|>assistant"
        );
        let low =
            render_with(BuiltinTemplate::Harmony, &plain, false, serde_json::json!({"reasoning_effort": "minimal"}));
        assert!(low.contains("Reasoning: low\n") && !low.ends_with("<|start|>assistant"), "{low}");
    }
}
