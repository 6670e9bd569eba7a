//! Responses input items: `input` (a string, or a list of messages, `function_call` and
//! `function_call_output` items) normalized into stored items with ids, and a conversation of
//! items turned into chat-completions messages, so the chat path (`messages`) checks them and
//! the chat template renders them. Reasoning items stay in the stored context but are not
//! rendered (templates drop earlier thinking). Errors name the item: `input[2].call_id`.

use serde_json::{json, Map, Value};
use wick_engine::text::ChatMessage;

use crate::error::ApiError;
use crate::openai::chat::RequestMessage;

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn unknown_key(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(Some(&format!("{at}.{k}")), format!("Unknown field `{k}` in this item."))),
        None => Ok(()),
    }
}

fn string(obj: &Map<String, Value>, key: &str, at: &str) -> Result<String, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ApiError::invalid_value(&format!("{at}.{key}"), format!("`{key}` must be a string."))),
    }
}

/// The request's `input` as items with ids (a string is one user message).
pub fn items(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    match input {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![message_item("user", vec![part("input_text", s)])]),
        Some(Value::Array(list)) => list.iter().enumerate().map(|(j, v)| item(v, &format!("input[{j}]"))).collect(),
        Some(_) => Err(ApiError::invalid_value("input", "`input` must be a string or a list of input items.")),
    }
}

fn part(kind: &str, text: &str) -> Value {
    json!({"type": kind, "text": text})
}

fn message_item(role: &str, content: Vec<Value>) -> Value {
    json!({"id": new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"})
}

fn item(v: &Value, at: &str) -> Result<Value, ApiError> {
    let obj = v.as_object().ok_or_else(|| ApiError::invalid_value(at, "An input item must be an object."))?;
    let kind = match obj.get("type") {
        None if obj.contains_key("role") => "message",
        Some(Value::String(t)) => t.as_str(),
        _ => return Err(ApiError::invalid_value(&format!("{at}.type"), "An input item needs a `type`.")),
    };
    let mut out = obj.clone();
    let id_prefix = match kind {
        "message" => {
            unknown_key(obj, &["type", "role", "content", "id", "status", "phase"], at)?;
            let role = string(obj, "role", at)?;
            if !["user", "system", "developer", "assistant"].contains(&role.as_str()) {
                return Err(ApiError::invalid_value(
                    &format!("{at}.role"),
                    format!("Unsupported role {role:?}; expected user, system, developer or assistant."),
                ));
            }
            let text_kind = if role == "assistant" { "output_text" } else { "input_text" };
            let content = match obj.get("content") {
                Some(Value::String(s)) => vec![part(text_kind, s)],
                Some(Value::Array(parts)) => parts
                    .iter()
                    .enumerate()
                    .map(|(k, p)| content_part(p, &format!("{at}.content[{k}]"), &role))
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(ApiError::invalid_value(
                        &format!("{at}.content"),
                        "`content` must be a string or a list of content parts.",
                    ))
                }
            };
            out.insert("type".into(), json!("message"));
            out.insert("content".into(), Value::Array(content));
            "msg"
        }
        "function_call" => {
            unknown_key(obj, &["type", "call_id", "name", "arguments", "id", "status"], at)?;
            string(obj, "call_id", at)?;
            string(obj, "name", at)?;
            let args = string(obj, "arguments", at)?;
            if serde_json::from_str::<Value>(&args).is_err() {
                return Err(ApiError::invalid_value(&format!("{at}.arguments"), "`arguments` must be JSON text."));
            }
            "fc"
        }
        "function_call_output" => {
            unknown_key(obj, &["type", "call_id", "output", "id", "status"], at)?;
            string(obj, "call_id", at)?;
            match obj.get("output") {
                Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (k, p) in parts.iter().enumerate() {
                        content_part(p, &format!("{at}.output[{k}]"), "tool")?;
                    }
                }
                _ => {
                    return Err(ApiError::invalid_value(
                        &format!("{at}.output"),
                        "`output` must be a string or a list of input_text parts.",
                    ))
                }
            }
            "fco"
        }
        "reasoning" => {
            unknown_key(obj, &["type", "id", "summary", "content", "encrypted_content", "status"], at)?;
            "rs"
        }
        "item_reference" => {
            return Err(ApiError::unsupported(
                &format!("{at}.type"),
                "Item references are not supported; send the items themselves or use `previous_response_id`.",
            ))
        }
        other => {
            return Err(ApiError::unsupported(
                &format!("{at}.type"),
                format!("Input items of type {other:?} are not supported (only message, function_call, function_call_output and reasoning)."),
            ))
        }
    };
    if !matches!(out.get("id"), Some(Value::String(s)) if !s.is_empty()) {
        out.insert("id".into(), json!(new_id(id_prefix)));
    }
    out.entry("status").or_insert(json!("completed"));
    Ok(Value::Object(out))
}

fn content_part(p: &Value, at: &str, role: &str) -> Result<Value, ApiError> {
    let obj = p.as_object().ok_or_else(|| ApiError::invalid_value(at, "A content part must be an object."))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            unknown_key(obj, &["type", "text", "annotations", "logprobs"], at)?;
            let text = string(obj, "text", at)?;
            let kind = if role == "assistant" { "output_text" } else { "input_text" };
            Ok(part(kind, &text))
        }
        Some("refusal") if role == "assistant" => Ok(p.clone()),
        Some("input_image") => {
            Err(ApiError::unsupported(at, "This model does not accept images; send text parts only."))
        }
        Some("input_file") => Err(ApiError::unsupported(at, "This model does not accept files; send text parts only.")),
        Some("input_audio") => {
            Err(ApiError::unsupported(at, "This model does not accept audio; send text parts only."))
        }
        Some(other) => {
            Err(ApiError::invalid_value(&format!("{at}.type"), format!("Unknown content part type {other:?}.")))
        }
        None => Err(ApiError::invalid_value(&format!("{at}.type"), "A content part needs a `type`.")),
    }
}

/// The text of a message's (or a tool output's) parts.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => String::new(),
    }
}

/// Chat messages for the template: `instructions` as the system message, then `items` (each
/// with the path that errors name). Consecutive `function_call` items join the assistant
/// message before them, as one turn's calls.
pub fn to_messages(instructions: Option<&str>, items: &[(String, Value)]) -> Result<Vec<ChatMessage>, ApiError> {
    let mut chat: Vec<Value> = Vec::new();
    let mut origin: Vec<String> = Vec::new();
    if let Some(i) = instructions {
        chat.push(json!({"role": "system", "content": i}));
        origin.push("instructions".into());
    }
    for (at, item) in items {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
                chat.push(json!({"role": role, "content": text_of(item.get("content"))}));
                origin.push(at.clone());
            }
            Some("function_call") => {
                let call = json!({"id": item["call_id"], "type": "function",
                                  "function": {"name": item["name"], "arguments": item["arguments"]}});
                let joins = chat.last().is_some_and(|m| m["role"] == "assistant");
                match chat.last_mut().filter(|_| joins) {
                    Some(last) => match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => {
                            last["tool_calls"] = json!([call]);
                        }
                    },
                    None => {
                        chat.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                        origin.push(at.clone());
                    }
                }
            }
            Some("function_call_output") => {
                chat.push(
                    json!({"role": "tool", "tool_call_id": item["call_id"], "content": text_of(item.get("output"))}),
                );
                origin.push(at.clone());
            }
            _ => {}
        }
    }
    let parsed: Vec<RequestMessage> = chat
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::invalid(Some("input"), format!("Invalid input items: {e}")))?;
    crate::messages::messages(&parsed).map_err(|mut e| {
        e.param = e.param.map(|p| rename_param(&p, &origin));
        e
    })
}

/// `messages[3].tool_call_id` → `input[2].call_id` (the item message 3 came from).
fn rename_param(param: &str, origin: &[String]) -> String {
    let Some(rest) = param.strip_prefix("messages[") else { return param.to_owned() };
    let Some((index, tail)) = rest.split_once(']') else { return param.to_owned() };
    let Some(at) = index.parse::<usize>().ok().and_then(|i| origin.get(i)) else { return param.to_owned() };
    match tail {
        ".tool_call_id" => format!("{at}.call_id"),
        t if t.starts_with(".content") => format!("{at}{t}"),
        _ => at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_paths(items: Vec<Value>) -> Vec<(String, Value)> {
        items.into_iter().enumerate().map(|(j, v)| (format!("input[{j}]"), v)).collect()
    }

    #[test]
    fn a_string_is_one_user_message_with_an_id() {
        let items = items(Some(&json!("hi"))).expect("valid");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[0]["content"][0], json!({"type": "input_text", "text": "hi"}));
        assert!(items[0]["id"].as_str().is_some_and(|i| i.starts_with("msg_")));
        let msgs = to_messages(Some("be brief"), &with_paths(items)).expect("messages");
        assert_eq!(msgs, vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "hi")]);
    }

    #[test]
    fn calls_join_their_turn_and_outputs_answer_them() {
        let input = json!([
            {"role": "user", "content": "weather?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
            {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        ]);
        let items = items(Some(&input)).expect("valid");
        let msgs = to_messages(None, &with_paths(items)).expect("messages");
        assert_eq!(msgs.len(), 4);
        assert_eq!((msgs[1].role.as_str(), msgs[1].content.as_str()), ("assistant", "Let me look."));
        let calls = msgs[1].tool_calls.as_ref().expect("calls");
        assert_eq!(calls[1]["function"]["arguments"]["city"], "Rome");
        assert_eq!((msgs[3].name.as_deref(), msgs[3].content.as_str()), (Some("get"), "rain"));
    }

    #[test]
    fn bad_items_name_their_path() {
        for (input, param) in [
            (json!([{"type": "function_call_output", "call_id": "nope", "output": "x"}]), "input[0].call_id"),
            (json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]), "input[0].content[0]"),
            (json!([{"type": "web_search_call", "id": "ws"}]), "input[0].type"),
            (json!([{"type": "item_reference", "id": "msg_1"}]), "input[0].type"),
            (json!([{"role": "wizard", "content": "x"}]), "input[0].role"),
            (json!([{"role": "user", "content": "x", "name": "bob"}]), "input[0].name"),
            (json!([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]), "input[0].arguments"),
            (json!(5), "input"),
        ] {
            let e = match items(Some(&input)) {
                Err(e) => e,
                Ok(items) => to_messages(None, &with_paths(items)).expect_err("rejected"),
            };
            assert_eq!(e.status, 400, "{input}");
            assert_eq!(e.param.as_deref(), Some(param), "{input}");
        }
    }
}
