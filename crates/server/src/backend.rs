//! What the HTTP layer needs from the engine, as a trait: the real [`Engine`] implements it,
//! and the server's unit tests drive the routes with a scripted stand-in.

use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

use wick_engine::grammar::{CompiledGrammar, GrammarError, GrammarSpec, Trigger};
use wick_engine::text::ChatMessage;
use wick_engine::{Engine, EngineError, EngineStats, Event, GenerateRequest, SubmitError};

/// The engine as the server sees it.
pub trait Backend: Send + Sync + 'static {
    /// Queues a request; dropping the receiver cancels it.
    fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError>;
    fn stats(&self) -> EngineStats;
    fn is_running(&self) -> bool;
    fn max_model_len(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Chat template + tokenize, with the generation prompt; `extra` holds more template
    /// variables (`tools`, `chat_template_kwargs`), or is null.
    fn encode_chat(&self, messages: &[ChatMessage], extra: &serde_json::Value) -> Result<Vec<u32>, EngineError>;
    /// The chat template's source (to tell which tool format the model writes).
    fn chat_template_source(&self) -> String;
    /// The id of `text` when it is exactly one token, and whether that token is special.
    fn single_token(&self, text: &str) -> Option<(u32, bool)>;
    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError>;
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError>;
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError>;
    fn token_text(&self, id: u32) -> (String, Vec<u8>);
    /// Compiles a grammar (structured output, tool calls) for this model.
    fn compile_grammar(
        &self,
        spec: &GrammarSpec,
        trigger: Option<Trigger>,
    ) -> Result<Arc<CompiledGrammar>, GrammarError>;
}

impl Backend for Engine {
    fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        Engine::submit(self, req)
    }
    fn stats(&self) -> EngineStats {
        Engine::stats(self)
    }
    fn is_running(&self) -> bool {
        Engine::is_running(self)
    }
    fn max_model_len(&self) -> usize {
        Engine::max_model_len(self)
    }
    fn vocab_size(&self) -> usize {
        self.text().vocab_size()
    }
    fn encode_chat(&self, messages: &[ChatMessage], extra: &serde_json::Value) -> Result<Vec<u32>, EngineError> {
        self.text().encode_chat_with(messages, extra)
    }
    fn chat_template_source(&self) -> String {
        self.text().chat_template().source().to_owned()
    }
    fn single_token(&self, text: &str) -> Option<(u32, bool)> {
        let t = self.text();
        match t.encode(text, false).ok()?.as_slice() {
            [id] => Some((*id, t.special_token_ids().binary_search(id).is_ok())),
            _ => None,
        }
    }
    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, EngineError> {
        self.text().render_chat(messages, add_generation_prompt)
    }
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        self.text().encode(text, add_special_tokens)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, EngineError> {
        self.text().decode(ids, skip_special_tokens)
    }
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        self.text().token_text(id)
    }
    fn compile_grammar(
        &self,
        spec: &GrammarSpec,
        trigger: Option<Trigger>,
    ) -> Result<Arc<CompiledGrammar>, GrammarError> {
        Engine::compile_grammar(self, spec, trigger)
    }
}
