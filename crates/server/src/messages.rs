//! Chat messages as the template sees them: roles checked (`developer` becomes `system`),
//! content flattened from text parts, and what the model cannot take (images, audio, files,
//! tool calls, participant names) rejected with a 400 naming the field.

use serde_json::Value;
use wick_engine::text::ChatMessage;

use crate::error::ApiError;
use crate::openai::chat::{MessageContent, RequestMessage};

/// Flattens the messages for the chat template, rejecting what the model cannot take.
pub fn messages(msgs: &[RequestMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    msgs.iter().enumerate().map(|(i, m)| message(i, m)).collect()
}

fn message(i: usize, m: &RequestMessage) -> Result<ChatMessage, ApiError> {
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
    if m.tool_calls.as_ref().and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
        return Err(ApiError::unsupported(&at("tool_calls"), "Tool calls are not supported yet."));
    }
    if m.function_call.is_some() {
        return Err(ApiError::unsupported(&at("function_call"), "Function calls are not supported."));
    }
    if m.audio.is_some() {
        return Err(ApiError::unsupported(&at("audio"), "This model does not accept audio."));
    }
    if m.tool_call_id.is_some() && role != "tool" {
        return Err(ApiError::invalid_value(&at("tool_call_id"), "`tool_call_id` belongs on tool messages only."));
    }
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
    Ok(ChatMessage::new(role, content))
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
