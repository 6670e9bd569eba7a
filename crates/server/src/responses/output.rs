//! The model's text as output items: reasoning (`reasoning` items with summary text), content
//! (`message` items with one `output_text` part) and tool calls (`function_call` items), from
//! the same per-choice parser as chat completions. [`Stream`] writes the documented event
//! sequence as parts arrive: every event has an increasing `sequence_number`, and each item's
//! events carry its `item_id` and `output_index`.

use serde_json::{json, Value};
use wick_engine::FinishReason;

use crate::openai::responses::{OutputItem, OutputText, ResponseObject, SummaryText};
use crate::output::{ChoiceParser, Message, OutputFormat, Part};
use crate::tools;

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// `completed`, or `incomplete` when the output hit its token limit.
pub fn status_of(reason: Option<FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Length) => "incomplete",
        _ => "completed",
    }
}

fn message(text: String, status: &str) -> OutputItem {
    OutputItem::Message {
        id: new_id("msg"),
        status: status.into(),
        role: "assistant".into(),
        content: vec![OutputText::new(text)],
    }
}

/// The output items of a whole (non-streamed) answer: reasoning, then the message (unless the
/// answer is only calls), then the calls.
pub fn items(m: Message, status: &str) -> Vec<OutputItem> {
    let mut out = Vec::new();
    if let Some(r) = m.reasoning {
        out.push(OutputItem::Reasoning { id: new_id("rs"), status: status.into(), summary: vec![SummaryText::new(r)] });
    }
    if let Some(c) = m.content.filter(|c| !c.is_empty() || m.calls.is_empty()) {
        out.push(message(c, status));
    }
    for call in m.calls {
        out.push(OutputItem::FunctionCall {
            id: new_id("fc"),
            status: "completed".into(),
            call_id: tools::new_call_id(),
            name: call.name,
            arguments: call.arguments,
        });
    }
    out
}

/// One streamed event: its type and its JSON (type and sequence number included).
pub type Sse = (String, String);

/// The item being streamed.
enum Open {
    Message { text: String },
    Reasoning { text: String },
}

/// Writes the event stream of one response.
pub struct Stream {
    seq: u64,
    parser: ChoiceParser,
    pub output: Vec<OutputItem>,
    open: Option<(usize, String, Open)>,
    pub reasoning_text: String,
}

impl Stream {
    pub fn new(format: &OutputFormat) -> Self {
        Self {
            seq: 0,
            parser: ChoiceParser::new(format),
            output: Vec::new(),
            open: None,
            reasoning_text: String::new(),
        }
    }

    fn emit(&mut self, kind: &str, mut body: Value, out: &mut Vec<Sse>) {
        if let Some(o) = body.as_object_mut() {
            o.insert("type".into(), json!(kind));
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        out.push((kind.to_owned(), body.to_string()));
    }

    /// `response.created` and `response.in_progress` with the response so far.
    pub fn start(&mut self, response: &ResponseObject) -> Vec<Sse> {
        let mut out = Vec::new();
        self.emit("response.created", json!({"response": response}), &mut out);
        self.emit("response.in_progress", json!({"response": response}), &mut out);
        out
    }

    /// Newly released text of the answer.
    pub fn text(&mut self, text: &str) -> Vec<Sse> {
        let parts = self.parser.push(text);
        self.parts(parts)
    }

    /// The end of the answer: the held text, then every open item closed with `status`.
    pub fn finish(&mut self, text: &str, status: &str) -> Vec<Sse> {
        let mut parts = self.parser.push(text);
        parts.extend(self.parser.finish());
        let mut out = self.parts(parts);
        if self.output.is_empty() && self.open.is_none() {
            self.open_message(&mut out);
        }
        self.close(status, &mut out);
        out
    }

    /// `response.completed` (or `response.incomplete`) with the final response.
    pub fn end(&mut self, response: &ResponseObject) -> Vec<Sse> {
        let mut out = Vec::new();
        let kind = if response.status == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.emit(kind, json!({"response": response}), &mut out);
        out
    }

    /// `response.failed` with the response as it stood.
    pub fn failed(&mut self, response: &ResponseObject) -> Vec<Sse> {
        let mut out = Vec::new();
        self.emit("response.failed", json!({"response": response}), &mut out);
        out
    }

    fn parts(&mut self, parts: Vec<Part>) -> Vec<Sse> {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Part::Reasoning(t) => {
                    if !matches!(self.open, Some((_, _, Open::Reasoning { .. }))) {
                        self.close("completed", &mut out);
                        self.open_reasoning(&mut out);
                    }
                    self.reasoning_text.push_str(&t);
                    let Some((index, id, Open::Reasoning { text })) = self.open.as_mut() else { continue };
                    text.push_str(&t);
                    let body = json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": t});
                    self.emit("response.reasoning_summary_text.delta", body, &mut out);
                }
                Part::Content(t) => {
                    if !matches!(self.open, Some((_, _, Open::Message { .. }))) {
                        self.close("completed", &mut out);
                        self.open_message(&mut out);
                    }
                    let Some((index, id, Open::Message { text })) = self.open.as_mut() else { continue };
                    text.push_str(&t);
                    let body = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t,
                                      "logprobs": []});
                    self.emit("response.output_text.delta", body, &mut out);
                }
                Part::Call(call) => {
                    self.close("completed", &mut out);
                    let index = self.output.len();
                    let id = new_id("fc");
                    let call_id = tools::new_call_id();
                    let item = |arguments: &str, status: &str| OutputItem::FunctionCall {
                        id: id.clone(),
                        status: status.into(),
                        call_id: call_id.clone(),
                        name: call.name.clone(),
                        arguments: arguments.into(),
                    };
                    let (added, done) = (item("", "in_progress"), item(&call.arguments, "completed"));
                    self.emit("response.output_item.added", json!({"output_index": index, "item": added}), &mut out);
                    let body = json!({"item_id": id, "output_index": index, "delta": call.arguments});
                    self.emit("response.function_call_arguments.delta", body, &mut out);
                    let body = json!({"item_id": id, "output_index": index, "arguments": call.arguments,
                                      "name": call.name});
                    self.emit("response.function_call_arguments.done", body, &mut out);
                    self.emit("response.output_item.done", json!({"output_index": index, "item": done}), &mut out);
                    self.output.push(done);
                }
            }
        }
        out
    }

    fn open_message(&mut self, out: &mut Vec<Sse>) {
        let index = self.output.len();
        let id = new_id("msg");
        let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
        self.emit("response.output_item.added", json!({"output_index": index, "item": item}), out);
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        let body = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
        self.emit("response.content_part.added", body, out);
        self.open = Some((index, id, Open::Message { text: String::new() }));
    }

    fn open_reasoning(&mut self, out: &mut Vec<Sse>) {
        let index = self.output.len();
        let id = new_id("rs");
        let item = json!({"type": "reasoning", "id": id, "status": "in_progress", "summary": []});
        self.emit("response.output_item.added", json!({"output_index": index, "item": item}), out);
        let body = json!({"item_id": id, "output_index": index, "summary_index": 0,
                          "part": {"type": "summary_text", "text": ""}});
        self.emit("response.reasoning_summary_part.added", body, out);
        self.open = Some((index, id, Open::Reasoning { text: String::new() }));
    }

    fn close(&mut self, status: &str, out: &mut Vec<Sse>) {
        let Some((index, id, open)) = self.open.take() else { return };
        let item = match open {
            Open::Message { text } => {
                let body = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text,
                                  "logprobs": []});
                self.emit("response.output_text.done", body, out);
                let part = OutputText::new(text.clone());
                let body = json!({"item_id": id, "output_index": index, "content_index": 0, "part": part});
                self.emit("response.content_part.done", body, out);
                OutputItem::Message { id, status: status.into(), role: "assistant".into(), content: vec![part] }
            }
            Open::Reasoning { text } => {
                let body = json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text});
                self.emit("response.reasoning_summary_text.done", body, out);
                let part = SummaryText::new(text);
                let body = json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part});
                self.emit("response.reasoning_summary_part.done", body, out);
                OutputItem::Reasoning { id, status: status.into(), summary: vec![part] }
            }
        };
        self.emit("response.output_item.done", json!({"output_index": index, "item": item}), out);
        self.output.push(item);
    }
}
