//! Chat messages as the template sees them: roles checked (`developer` becomes `system`),
//! content flattened from text parts, assistant tool calls checked (arguments parsed to objects,
//! as HF templates expect), each tool result's `tool_call_id` matched to an earlier call, and
//! what the model cannot take (images, audio, files, participant names) rejected with a 400
//! naming the field.

use std::collections::HashMap;

use serde_json::{json, Value};
use wick_engine::text::ChatMessage;

use crate::error::ApiError;
use crate::openai::chat::{MessageContent, RequestMessage};

/// Flattens the messages for the chat template, rejecting what the model cannot take.
pub fn messages(msgs: &[RequestMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    // Tool-call ids seen so far, with their function names.
    let mut calls: HashMap<String, String> = HashMap::new();
    msgs.iter().enumerate().map(|(i, m)| message(i, m, &mut calls)).collect()
}

/// An assistant message's `tool_calls`, checked, with each id registered in `calls`.
fn tool_calls(i: usize, v: &Value, calls: &mut HashMap<String, String>) -> Result<Option<Value>, ApiError> {
    let at = |j: usize, f: &str| format!("messages[{i}].tool_calls[{j}]{f}");
    let Some(list) = v.as_array() else {
        return Err(ApiError::invalid_value(&format!("messages[{i}].tool_calls"), "`tool_calls` must be an array."));
    };
    if list.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(list.len());
    for (j, c) in list.iter().enumerate() {
        let id = c.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let id = id.ok_or_else(|| ApiError::invalid_value(&at(j, ".id"), "A tool call needs an `id`."))?;
        if c.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(ApiError::unsupported(&at(j, ".type"), "Only function tool calls are supported."));
        }
        let name = c.pointer("/function/name").and_then(Value::as_str);
        let name = name
            .ok_or_else(|| ApiError::invalid_value(&at(j, ".function.name"), "A tool call needs a function name."))?;
        let arguments = match c.pointer("/function/arguments") {
            Some(Value::String(a)) => serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.clone())),
            None | Some(Value::Null) => json!({}),
            Some(a) => a.clone(),
        };
        calls.insert(id.to_owned(), name.to_owned());
        out.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
    }
    Ok(Some(Value::Array(out)))
}

fn message(i: usize, m: &RequestMessage, calls: &mut HashMap<String, String>) -> Result<ChatMessage, ApiError> {
    let at = |f: &str| format!("messages[{i}].{f}");
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid_value(
                &at("role"),
                format!("Unsupported role {other:?}; expected system, developer, user, assistant or tool."),
            ))
        }
    };
    if m.name.is_some() {
        return Err(ApiError::unsupported(&at("name"), "Participant names are not supported by the chat template."));
    }
    let tool_calls = match &m.tool_calls {
        None | Some(Value::Null) => None,
        Some(_) if role != "assistant" => {
            return Err(ApiError::invalid_value(&at("tool_calls"), "`tool_calls` belongs on assistant messages only."))
        }
        Some(v) => tool_calls(i, v, calls)?,
    };
    if m.function_call.is_some() {
        return Err(ApiError::unsupported(&at("function_call"), "Function calls are not supported."));
    }
    if m.audio.is_some() {
        return Err(ApiError::unsupported(&at("audio"), "This model does not accept audio."));
    }
    if m.tool_call_id.is_some() && role != "tool" {
        return Err(ApiError::invalid_value(&at("tool_call_id"), "`tool_call_id` belongs on tool messages only."));
    }
    let tool_name = match (role, &m.tool_call_id) {
        ("tool", None) => {
            return Err(ApiError::invalid_value(
                &at("tool_call_id"),
                "A tool message needs the `tool_call_id` it answers.",
            ))
        }
        ("tool", Some(id)) => match calls.get(id) {
            Some(name) => Some(name.clone()),
            None => {
                return Err(ApiError::invalid_value(
                    &at("tool_call_id"),
                    format!("`tool_call_id` {id:?} does not match any tool call of an earlier assistant message."),
                ))
            }
        },
        _ => None,
    };
    let content = match &m.content {
        None if role == "assistant" => String::new(),
        None => return Err(ApiError::invalid_value(&at("content"), "`content` is required.")),
        Some(MessageContent::Text(s)) => s.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let p = format!("messages[{i}].content[{j}]");
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) if part.rest.is_empty() => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid_value(&format!("{p}.text"), "A text part needs `text`."))
                    }
                    ("text", Some(_)) => {
                        let extra = part.rest.keys().next().map_or("", String::as_str);
                        return Err(ApiError::invalid(
                            Some(&format!("{p}.{extra}")),
                            format!("Unknown field `{extra}` in a text part."),
                        ));
                    }
                    ("refusal", _) if role == "assistant" => {}
                    ("image_url", _) | ("input_image", _) => {
                        return Err(ApiError::unsupported(
                            &p,
                            "This model does not accept images; send text parts only.",
                        ))
                    }
                    ("input_audio", _) => {
                        return Err(ApiError::unsupported(
                            &p,
                            "This model does not accept audio; send text parts only.",
                        ))
                    }
                    ("file", _) => {
                        return Err(ApiError::unsupported(
                            &p,
                            "This model does not accept files; send text parts only.",
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_value(
                            &format!("{p}.type"),
                            format!("Unknown content part type {other:?}."),
                        ))
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage {
        tool_calls,
        tool_call_id: m.tool_call_id.clone(),
        name: tool_name,
        ..ChatMessage::new(role, content)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse;
    use crate::openai::chat::ChatCompletionRequest;

    #[test]
    fn messages_flatten_text_parts_and_map_developer_to_system() {
        let req: ChatCompletionRequest = parse(
            br#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .expect("parses");
        let msgs = messages(&req.messages).expect("valid");
        assert_eq!(msgs[0], ChatMessage::new("system", "be brief"));
        assert_eq!(msgs[1], ChatMessage::new("user", "ab"));
    }

    #[test]
    fn image_parts_are_rejected() {
        let req: ChatCompletionRequest = parse(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x"}}]}]}"#,
        )
        .expect("parses");
        let e = messages(&req.messages).expect_err("images rejected");
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        assert!(e.message.contains("images"));
    }

    #[test]
    fn tool_results_must_answer_an_earlier_call() {
        let ok: ChatCompletionRequest = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"w?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get","arguments":"{\"city\": \"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"}]}"#,
        )
        .expect("parses");
        let msgs = messages(&ok.messages).expect("valid");
        assert_eq!(msgs[1].tool_calls.as_ref().expect("calls")[0]["function"]["arguments"]["city"], "Paris");
        assert_eq!((msgs[2].name.as_deref(), msgs[2].tool_call_id.as_deref()), (Some("get"), Some("c1")));
        for (body, param) in [
            (&br#"{"model":"m","messages":[{"role":"tool","tool_call_id":"nope","content":"x"}]}"#[..], "messages[0].tool_call_id"),
            (br#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#, "messages[0].tool_call_id"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x","tool_calls":[]}]}"#, "messages[0].tool_calls"),
            (br#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#, "messages[0].tool_calls[0].id"),
        ] {
            let req: ChatCompletionRequest = parse(body).expect("parses");
            assert_eq!(messages(&req.messages).expect_err("rejected").param.as_deref(), Some(param));
        }
    }

    #[test]
    fn roles_and_names_are_checked() {
        let req: ChatCompletionRequest =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]}"#)
                .expect("parses");
        assert_eq!(messages(&req.messages).expect_err("bad role").param.as_deref(), Some("messages[1].role"));
        let req: ChatCompletionRequest =
            parse(br#"{"model":"m","messages":[{"role":"user","content":"a","name":"bob"}]}"#).expect("parses");
        assert_eq!(messages(&req.messages).expect_err("names").param.as_deref(), Some("messages[0].name"));
    }
}
