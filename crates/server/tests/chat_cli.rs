//! `wick chat` in a pseudo-terminal against a real `wick serve` on SmolLM2
//! (`WICK_TEST_MODEL_SMOLLM2`; without it the test says so and passes): a streamed answer,
//! multi-line input, `/system`, `/save`, `/reset`, and Ctrl-C stopping an answer without
//! quitting, after which the server's running-request gauge is back to 0; and `wick chat --local`
//! with the model loaded in its own process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rexpect::session::spawn_command;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A plain HTTP GET: status and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// `wick:num_requests_running`, summed over its label sets (one per model).
fn running(port: u16) -> Option<f64> {
    let (_, body) = get(port, "/metrics")?;
    let samples: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("wick:num_requests_running ") || l.starts_with("wick:num_requests_running{"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// `/save`s the conversation to `path` and reads it back, reading the output up to the next
/// prompt (so that later matches see only what comes after).
fn save(p: &mut rexpect::session::PtySession, path: &std::path::Path) -> serde_json::Value {
    p.send_line(&format!("/save {}", path.display())).expect("send");
    p.exp_string("(saved to").expect("saved");
    p.exp_string(">>> ").expect("prompt after saving");
    serde_json::from_str(&std::fs::read_to_string(path).expect("saved file")).expect("json")
}

#[test]
fn wick_chat_in_a_terminal() {
    let Ok(model) = std::env::var("WICK_TEST_MODEL_SMOLLM2") else {
        eprintln!("notice: WICK_TEST_MODEL_SMOLLM2 unset; the `wick chat` terminal test did not run");
        return;
    };
    let wick = env!("CARGO_BIN_EXE_wick");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(wick)
        .args(["serve", "--model", &model, "--port", &port.to_string(), "--offline", "--no-ui"])
        .args(["--responses-store", "off", "--served-model-name", "smol"])
        .env("WICK_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wick serve starts");
    let _server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(180);
    while get(port, "/ready").is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < deadline, "wick serve not ready in time");
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut cmd = Command::new(wick);
    cmd.args(["chat", "--url", &format!("http://127.0.0.1:{port}"), "--temperature", "0", "--max-tokens", "150"]);
    let mut p = spawn_command(cmd, Some(120_000)).expect("wick chat starts");
    p.exp_string("smol at").expect("banner names the model");
    p.exp_string(">>> ").expect("prompt");

    // Multi-line input (a trailing backslash) and a streamed answer.
    p.send_line("/system You are terse.").expect("send");
    p.exp_string("(system prompt set)").expect("system set");
    p.send_line("Say the word hello \\").expect("send");
    p.exp_string("... ").expect("continuation prompt");
    p.send_line("and nothing else.").expect("send");
    p.exp_regex(r"[A-Za-z]").expect("streamed text");
    p.exp_string(">>> ").expect("prompt after the answer");

    let saved = dir.path().join("chat.json");
    let doc = save(&mut p, &saved);
    let msgs = doc["messages"].as_array().expect("messages");
    assert_eq!(msgs[0]["content"], "You are terse.");
    assert_eq!(msgs[1]["content"], "Say the word hello \nand nothing else.");
    assert_eq!(msgs[2]["role"], "assistant");
    assert!(!msgs[2]["content"].as_str().unwrap_or("").is_empty());

    // A """ block, then Ctrl-C in the middle of a long answer: the chat stays open.
    // (Each line waits for its continuation prompt: Ctrl-C flushes the terminal's unread input.)
    for line in [
        "\"\"\"",
        "Write a very long story about a dragon who learns to cook.",
        "Make it at least two thousand words long.",
    ] {
        p.send_line(line).expect("send");
        p.exp_string("... ").expect("continuation prompt");
    }
    p.send_line("\"\"\"").expect("send");
    p.exp_regex(r"[A-Za-z]{3}").expect("the answer starts");
    p.send_control('c').expect("ctrl-c");
    p.exp_string("[stopped]").expect("the answer stops");
    p.exp_string(">>> ").expect("still chatting");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(port) != Some(0.0) {
        assert!(Instant::now() < deadline, "the server kept generating after Ctrl-C: {:?}", running(port));
        std::thread::sleep(Duration::from_millis(100));
    }

    p.send_line("/reset").expect("send");
    p.exp_string("(conversation reset)").expect("reset");
    let doc = save(&mut p, &saved);
    assert_eq!(doc["messages"].as_array().map(Vec::len), Some(1), "only the system prompt is left: {doc}");
    p.send_line("/quit").expect("send");
    p.exp_eof().expect("quits");
}

#[test]
fn wick_chat_with_the_model_in_process() {
    let Ok(model) = std::env::var("WICK_TEST_MODEL_SMOLLM2") else {
        eprintln!("notice: WICK_TEST_MODEL_SMOLLM2 unset; the `wick chat --local` terminal test did not run");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.args(["chat", "--local", "--offline", "--model", &model, "--temperature", "0", "--max-tokens", "200"]);
    // No server listens on the default URL: the answer can only come from this process.
    cmd.env("WICK_CHAT_URL", "http://127.0.0.1:9");
    let mut p = spawn_command(cmd, Some(180_000)).expect("wick chat starts");
    p.exp_string("loading ").expect("says it loads the model");
    p.exp_string("loaded in this process").expect("banner");
    p.exp_string(">>> ").expect("prompt");
    p.send_line("What is the capital of France? Answer in one word.").expect("send");
    p.exp_regex(r"[A-Za-z]{3}").expect("streamed text");
    p.exp_string(">>> ").expect("prompt after the answer");

    // The answer is the model's, kept in the conversation.
    let saved = dir.path().join("chat.json");
    let doc = save(&mut p, &saved);
    let msgs = doc["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2, "{doc}");
    assert!(msgs[1]["content"].as_str().is_some_and(|c| c.contains("Paris")), "{doc}");

    // Ctrl-C stops a long answer and the chat goes on.
    p.send_line("Write a very long story about a dragon who learns to cook, two thousand words.").expect("send");
    p.exp_regex(r"[A-Za-z]{3}").expect("the answer starts");
    p.send_control('c').expect("ctrl-c");
    p.exp_string("[stopped]").expect("the answer stops");
    p.exp_string(">>> ").expect("still chatting");
    p.send_line("/quit").expect("send");
    p.exp_eof().expect("quits, and the in-process server with it");
}
