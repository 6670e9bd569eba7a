//! `wick chat`: a terminal chat against a running wick (or any OpenAI-compatible) server over
//! plain HTTP, or, with `--local`, against a model loaded in this process (the binary starts
//! its own server on a loopback port behind a one-off API key and talks to it the same way).
//! Answers stream as they are generated (thinking dimmed); a line ending in `\`
//! continues on the next line, and a `"""` line opens a block that a `"""` line closes;
//! `/reset`, `/system TEXT`, `/save FILE`, `/help` and `/quit`. Ctrl-C stops the answer in
//! flight (the connection is dropped, so the server frees the slot) and keeps the chat open;
//! Ctrl-D quits.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// The server's base URL (http only).
    #[arg(long, env = "WICK_CHAT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Load the model in this process instead of connecting to a server: `--model` is then a
    /// GGUF file, a Hugging Face folder or repo id, or `default` (the default model when absent).
    #[arg(long)]
    pub local: bool,
    /// With `--local`: a config file (the shape of config/default.toml) for the engine's settings.
    #[arg(long, requires = "local")]
    pub config: Option<PathBuf>,
    /// With `--local`: use only local caches, never the network.
    #[arg(long, requires = "local")]
    pub offline: bool,
    /// Model id [default: the first the server lists]; with `--local`, the model to load.
    #[arg(long)]
    pub model: Option<String>,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "WICK_CHAT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// System prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature [default: the server's].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Most tokens per answer [default: the server's].
    #[arg(long)]
    pub max_tokens: Option<u32>,
}

const HELP: &str = "Commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (empty: none)
  /save FILE      write the conversation to FILE as JSON
  /help           this text
  /quit           leave (Ctrl-D too)
A line ending in \\ continues on the next one; a line \"\"\" opens a block that \"\"\" closes.
Ctrl-C stops an answer.";

/// `http://host:port/base` split for the client.
struct Target {
    authority: String,
    base: String,
}

fn target(url: &str) -> Result<Target> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("--url must start with http:// (got {url})"))?;
    let (authority, base) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        bail!("--url has no host: {url}");
    }
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Ok(Target { authority, base: base.to_owned() })
}

struct Client {
    target: Target,
    key: Option<String>,
}

/// A response being read, and the connection task to abort to drop it.
struct Open {
    response: Response<Incoming>,
    conn: JoinHandle<()>,
}

impl Client {
    async fn send(&self, method: Method, path: &str, body: Option<String>) -> Result<Open> {
        let tcp = TcpStream::connect(&self.target.authority)
            .await
            .with_context(|| format!("connecting to {}", self.target.authority))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri = format!("{}{path}", self.target.base);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", &self.target.authority)
            .header("content-type", "application/json");
        if let Some(k) = &self.key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(req).await?;
        Ok(Open { response, conn })
    }

    async fn json(&self, method: Method, path: &str, body: Option<String>) -> Result<Value> {
        let open = self.send(method, path, body).await?;
        let status = open.response.status();
        let bytes = open.response.into_body().collect().await?.to_bytes();
        open.conn.abort();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{status}: {}", error_message(&v));
        }
        Ok(v)
    }
}

fn error_message(v: &Value) -> String {
    v.pointer("/error/message").and_then(Value::as_str).unwrap_or("no error message").to_owned()
}

struct Conversation {
    system: Option<String>,
    messages: Vec<Value>,
}

impl Conversation {
    fn wire(&self) -> Vec<Value> {
        let mut out: Vec<Value> = self.system.iter().map(|s| json!({"role": "system", "content": s})).collect();
        out.extend(self.messages.iter().cloned());
        out
    }
}

/// What a line (or block) of input asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Message(String),
    Reset,
    System(String),
    Save(PathBuf),
    Help,
    Quit,
    Unknown(String),
}

fn parse_command(text: &str) -> Input {
    let t = text.trim();
    let (cmd, arg) = t.split_once(char::is_whitespace).map_or((t, ""), |(c, a)| (c, a.trim()));
    match cmd {
        "/reset" => Input::Reset,
        "/system" => Input::System(arg.to_owned()),
        "/save" if !arg.is_empty() => Input::Save(PathBuf::from(arg)),
        "/help" | "/?" => Input::Help,
        "/quit" | "/exit" | "/bye" => Input::Quit,
        c if c.starts_with('/') && !c[1..].contains('/') => Input::Unknown(c.to_owned()),
        _ => Input::Message(text.to_owned()),
    }
}

/// Joins physical lines into one input: `\` at the end continues, `"""` blocks.
#[derive(Default)]
struct LineJoiner {
    buf: Vec<String>,
    block: bool,
}

impl LineJoiner {
    /// The whole input once `line` completes it.
    fn push(&mut self, line: &str) -> Option<String> {
        if self.block {
            if line.trim() == "\"\"\"" {
                self.block = false;
                return Some(std::mem::take(&mut self.buf).join("\n"));
            }
            self.buf.push(line.to_owned());
            return None;
        }
        if self.buf.is_empty() && line.trim() == "\"\"\"" {
            self.block = true;
            return None;
        }
        if let Some(head) = line.strip_suffix('\\') {
            self.buf.push(head.to_owned());
            return None;
        }
        self.buf.push(line.to_owned());
        Some(std::mem::take(&mut self.buf).join("\n"))
    }

    fn continuing(&self) -> bool {
        self.block || !self.buf.is_empty()
    }
}

fn prompt(cont: bool) {
    print!("{}", if cont { "... " } else { ">>> " });
    let _ = std::io::stdout().flush();
}

/// Stdin lines from a plain thread (blocking reads), `None` at end of input.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.blocking_send(l).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// How an answer ended.
enum Ended {
    Done,
    Stopped,
}

/// Streams one answer to stdout; returns its content and how it ended.
async fn answer(client: &Client, body: Value, sigint: &mut Signal) -> Result<(String, String, Ended)> {
    let open = client.send(Method::POST, "/v1/chat/completions", Some(body.to_string())).await?;
    let Open { response, conn } = open;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        conn.abort();
        bail!("{status}: {}", error_message(&serde_json::from_slice(&bytes).unwrap_or(Value::Null)));
    }
    let mut body = response.into_body();
    let (mut content, mut reasoning, mut buf) = (String::new(), String::new(), String::new());
    let mut thinking = false;
    let mut out = std::io::stdout();
    let ended = loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = sigint.recv() => break Ended::Stopped,
        };
        let Some(frame) = frame else { break Ended::Done };
        let Ok(data) = frame?.into_data() else { continue };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(cut) = buf.find("\n\n") {
            let event: String = buf.drain(..cut + 2).collect();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if v.get("error").is_some() {
                    bail!("the server failed mid-answer: {}", error_message(&v));
                }
                let delta = &v["choices"][0]["delta"];
                if let Some(r) = delta["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
                    if !thinking {
                        thinking = true;
                        let _ = write!(out, "\x1b[2m");
                    }
                    reasoning.push_str(r);
                    let _ = write!(out, "{r}");
                }
                if let Some(c) = delta["content"].as_str().filter(|c| !c.is_empty()) {
                    if thinking {
                        thinking = false;
                        let _ = writeln!(out, "\x1b[0m");
                    }
                    content.push_str(c);
                    let _ = write!(out, "{c}");
                }
                let _ = out.flush();
            }
        }
    };
    // Dropping the connection tells the server to stop generating.
    drop(body);
    conn.abort();
    if thinking {
        let _ = write!(out, "\x1b[0m");
    }
    Ok((content, reasoning, ended))
}

pub async fn run(args: ChatArgs) -> Result<()> {
    let client = Client { target: target(&args.url)?, key: args.api_key.clone().filter(|k| !k.is_empty()) };
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let models = client.json(Method::GET, "/v1/models", None).await.context("listing the server's models")?;
            models["data"][0]["id"].as_str().ok_or_else(|| anyhow!("the server lists no model"))?.to_owned()
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).context("catching Ctrl-C")?;
    let mut convo = Conversation { system: args.system.clone().filter(|s| !s.is_empty()), messages: Vec::new() };
    let place = if args.local { "loaded in this process".to_owned() } else { format!("at {}", args.url) };
    println!("wick chat: {model} {place}. /help for commands; Ctrl-C stops an answer, Ctrl-D quits.");
    let mut lines = stdin_lines();
    let mut joiner = LineJoiner::default();
    loop {
        prompt(joiner.continuing());
        let line = tokio::select! {
            l = lines.recv() => l,
            _ = sigint.recv() => {
                joiner = LineJoiner::default();
                println!("\n(Ctrl-D or /quit to leave)");
                continue;
            }
        };
        let Some(line) = line else {
            println!();
            break;
        };
        let Some(text) = joiner.push(&line) else { continue };
        if text.trim().is_empty() {
            continue;
        }
        match parse_command(&text) {
            Input::Quit => break,
            Input::Help => println!("{HELP}"),
            Input::Reset => {
                convo.messages.clear();
                println!("(conversation reset)");
            }
            Input::System(s) => {
                convo.system = (!s.is_empty()).then_some(s);
                println!("(system prompt {})", if convo.system.is_some() { "set" } else { "cleared" });
            }
            Input::Save(path) => {
                let doc = json!({"model": model, "messages": convo.wire()});
                match std::fs::write(&path, serde_json::to_string_pretty(&doc)?) {
                    Ok(()) => println!("(saved to {})", path.display()),
                    Err(e) => println!("(could not save {}: {e})", path.display()),
                }
            }
            Input::Unknown(c) => println!("(unknown command {c}; /help lists them)"),
            Input::Message(m) => {
                convo.messages.push(json!({"role": "user", "content": m}));
                let mut body = json!({"model": model, "messages": convo.wire(), "stream": true});
                if let Some(t) = args.temperature {
                    body["temperature"] = json!(t);
                }
                if let Some(n) = args.max_tokens {
                    body["max_tokens"] = json!(n);
                }
                match answer(&client, body, &mut sigint).await {
                    Ok((content, _, ended)) => {
                        if matches!(ended, Ended::Stopped) {
                            println!("\n[stopped]");
                        } else {
                            println!();
                        }
                        convo.messages.push(json!({"role": "assistant", "content": content}));
                    }
                    Err(e) => {
                        convo.messages.pop();
                        println!("\n(error: {e:#})");
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_on_backslash_and_in_blocks() {
        let mut j = LineJoiner::default();
        assert_eq!(j.push("one \\"), None);
        assert!(j.continuing());
        assert_eq!(j.push("two").as_deref(), Some("one \ntwo"));
        assert_eq!(j.push("\"\"\""), None);
        assert_eq!(j.push("a"), None);
        assert_eq!(j.push("  b\\"), None);
        assert_eq!(j.push("\"\"\"").as_deref(), Some("a\n  b\\"));
        assert!(!j.continuing());
    }

    #[test]
    fn commands_parse_and_other_text_is_a_message() {
        assert_eq!(parse_command("/reset"), Input::Reset);
        assert_eq!(parse_command("/system be brief"), Input::System("be brief".into()));
        assert_eq!(parse_command("/save out.json"), Input::Save("out.json".into()));
        assert_eq!(parse_command("/frob"), Input::Unknown("/frob".into()));
        assert_eq!(parse_command("/usr/bin is a path"), Input::Message("/usr/bin is a path".into()));
        assert_eq!(parse_command("hello"), Input::Message("hello".into()));
    }

    #[test]
    fn urls_split_into_authority_and_base() {
        let t = target("http://127.0.0.1:9000/").expect("ok");
        assert_eq!((t.authority.as_str(), t.base.as_str()), ("127.0.0.1:9000", ""));
        let t = target("http://example/api").expect("ok");
        assert_eq!((t.authority.as_str(), t.base.as_str()), ("example:80", "/api"));
        assert!(target("https://x").is_err());
    }
}
