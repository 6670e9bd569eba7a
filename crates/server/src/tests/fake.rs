//! A scripted stand-in for the engine: a character tokenizer, and generation that replays a
//! fixed script per choice, so the HTTP layer can be tested without a model.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use wick_engine::text::ChatMessage;
use wick_engine::{
    EngineError, EngineStats, Event, FinishReason, GenerateRequest, SubmitError, TokenLogprob, TopLogprob, Usage,
};

use std::sync::Arc;

use wick_engine::grammar::{CompiledGrammar, GrammarError, GrammarSpec, Trigger};

use crate::backend::Backend;

#[derive(Clone, Copy, PartialEq)]
pub enum Script {
    /// Each choice emits "Hel", "" (held back), "lo" then finishes with "!" and Stop.
    Normal,
    /// Submit answers Overloaded.
    Overloaded,
    /// One token, then an engine error.
    FailAfterOne,
    /// Nothing is ever sent; the sender is kept so tests can see the cancel.
    Hang,
    /// A thinking model (its template writes `<think>`): tags split across tokens.
    Thinking,
}

/// The token texts of [`Script::Thinking`].
pub const THINKING: &[&str] = &["\n<th", "ink>", "Let me", " think.</", "think", ">", "\n", "\nAns", "wer."];

pub struct Fake {
    pub script: Script,
    pub submitted: Mutex<Vec<GenerateRequest>>,
    pub held: Mutex<Vec<UnboundedSender<Event>>>,
}

impl Fake {
    pub fn new(script: Script) -> Self {
        Self { script, submitted: Mutex::new(Vec::new()), held: Mutex::new(Vec::new()) }
    }

    /// Whether every held request has been cancelled (its receiver dropped).
    pub fn all_cancelled(&self) -> bool {
        let held = self.held.lock().expect("lock");
        !held.is_empty() && held.iter().all(UnboundedSender::is_closed)
    }

    pub fn last(&self) -> GenerateRequest {
        self.submitted.lock().expect("lock").last().cloned().expect("a submitted request")
    }
}

fn logprob(id: u32, text: &str) -> TokenLogprob {
    TokenLogprob {
        token_id: id,
        token: text.to_owned(),
        bytes: text.as_bytes().to_vec(),
        logprob: -0.5,
        top: vec![TopLogprob { token_id: id, token: text.to_owned(), bytes: text.as_bytes().to_vec(), logprob: -0.5 }],
    }
}

async fn play(tx: UnboundedSender<Event>, req: GenerateRequest, script: &'static [&'static str]) {
    let lp = req.params.logprobs.is_some();
    for choice in 0..req.n {
        for (id, text) in script.iter().enumerate().map(|(i, t)| (i as u32 + 1, *t)) {
            let logprob = lp.then(|| logprob(id, if text.is_empty() { "l" } else { text }));
            let _ = tx.send(Event::Token { choice, token_id: id, text: text.to_owned(), logprob });
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let tail = if script.len() == 3 { "!" } else { "" };
        let _ = tx.send(Event::Finished { choice, reason: FinishReason::Stop, text: tail.into() });
    }
    let usage =
        Usage { prompt_tokens: req.prompt_ids.len(), completion_tokens: script.len() * req.n, cached_tokens: 0 };
    let _ = tx.send(Event::Done {
        usage,
        queue_time: Duration::from_millis(1),
        first_token_time: Some(Duration::from_millis(2)),
    });
}

impl Backend for Fake {
    fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        if self.script == Script::Overloaded {
            return Err(SubmitError::Overloaded { waiting: 7 });
        }
        self.submitted.lock().expect("lock").push(req.clone());
        let (tx, rx) = unbounded_channel();
        match self.script {
            Script::Normal => {
                tokio::spawn(play(tx, req, &["Hel", "", "lo"]));
            }
            Script::Thinking => {
                tokio::spawn(play(tx, req, THINKING));
            }
            Script::FailAfterOne => {
                let _ = tx.send(Event::Token { choice: 0, token_id: 1, text: "Hel".into(), logprob: None });
                let _ = tx.send(Event::Error("kv cache exploded".into()));
            }
            Script::Hang | Script::Overloaded => self.held.lock().expect("lock").push(tx),
        }
        Ok(rx)
    }
    fn stats(&self) -> EngineStats {
        EngineStats { running: 2, waiting: 1, kv_blocks_used: 1, kv_blocks_total: 4, ..EngineStats::default() }
    }
    fn is_running(&self) -> bool {
        true
    }
    fn max_model_len(&self) -> usize {
        64
    }
    fn vocab_size(&self) -> usize {
        128
    }
    fn chat_template_source(&self) -> String {
        if self.script == Script::Thinking {
            "{{ '<think>' }}".into()
        } else {
            String::new()
        }
    }
    fn single_token(&self, _text: &str) -> Option<(u32, bool)> {
        None
    }
    fn encode_chat(&self, messages: &[ChatMessage], _extra: &serde_json::Value) -> Result<Vec<u32>, EngineError> {
        let text: String = messages.iter().map(|m| format!("{}:{};", m.role, m.content)).collect();
        self.encode(&text, false)
    }
    fn render_chat(&self, messages: &[ChatMessage], _add_generation_prompt: bool) -> Result<String, EngineError> {
        Ok(messages.iter().map(|m| format!("{}:{};", m.role, m.content)).collect())
    }
    fn encode(&self, text: &str, _add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        if text.contains("PANIC") {
            panic!("scripted panic");
        }
        Ok(text.bytes().map(|b| u32::from(b) % 128).collect())
    }
    fn decode(&self, ids: &[u32], _skip_special_tokens: bool) -> Result<String, EngineError> {
        Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
    }
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let s = char::from(id as u8).to_string();
        (s.clone(), s.into_bytes())
    }
    /// The scripted engine has no vocabulary for grammars: a schema containing `"bad"` is
    /// invalid (as llguidance would say), any other is unavailable.
    fn compile_grammar(&self, spec: &GrammarSpec, _: Option<Trigger>) -> Result<Arc<CompiledGrammar>, GrammarError> {
        match spec {
            GrammarSpec::JsonSchema(s) if s.to_string().contains("bad") => {
                Err(GrammarError::Invalid("unknown type: bad".into()))
            }
            _ => Err(GrammarError::Setup("the scripted engine has no grammar support".into())),
        }
    }
}
