//! `smelt serve` as a real process on 127.0.0.1 at an ephemeral port, over a tiny random
//! Qwen3 with the real vocabulary, tokenizer and chat template, called with a real HTTP client.
//! Every answer is checked against `smelt generate` run alone on the same request.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod api;
mod bench;
mod load;
mod openai;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The served model's name.
const NAME: &str = "tiny";

/// The tiny random model (1 layer, hidden 32, the real 151,936-token vocabulary), written
/// once per test run (beside the last run's, then moved into its place).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let (dir, fresh) = (tmp.join("serve-model"), tmp.join(format!("serve-model.{}", std::process::id())));
        std::fs::create_dir_all(&fresh).unwrap();
        common::random_model::write_random_qwen3(&fresh, 7);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&fresh, &dir).unwrap();
        dir
    })
}

/// A running `smelt serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    stderr: PathBuf,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let dir = model_dir();
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = dir.join(format!("serve-{n}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args(["serve", "--model", dir.to_str().unwrap(), "--port", "0", "--served-model-name", NAME])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(address) = line.trim().strip_prefix("smelt serve: listening on ") else {
            let _ = child.kill();
            panic!("smelt serve did not start: {line:?}\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
        };
        Server { url: address.to_string(), child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the process to exit (at most `limit`), returning its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t0.elapsed() < limit, "smelt serve still running after {limit:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut response = client().post(format!("{}{path}", self.url)).send_json(body).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_json().unwrap())
    }

    /// POSTs raw bytes; the status and the body as JSON (Null if it is not JSON).
    pub fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let mut response = client().post(format!("{}{path}", self.url)).send(&body[..]).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_json().unwrap_or(Value::Null))
    }

    /// A streamed request's `data:` payloads, `[DONE]` included.
    pub fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let mut response = client().post(format!("{}{path}", self.url)).send_json(body).unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        sse_events(&response.body_mut().read_to_string().unwrap())
    }

    /// A value of `/metrics` (the first line that starts with `name `).
    pub fn metric(&self, name: &str) -> f64 {
        let text = get_text(&format!("{}/metrics", self.url));
        let prefix = format!("{name} ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line[prefix.len()..].parse().unwrap()
    }

    /// Waits until no sequence holds a KV block or a place in the batch.
    pub fn wait_drained(&self, limit: Duration) {
        let t0 = Instant::now();
        while self.metric("smelt_kv_blocks_used") != 0.0
            || self.metric("smelt_running_sequences") != 0.0
            || self.metric("smelt_waiting_sequences") != 0.0
        {
            assert!(t0.elapsed() < limit, "KV blocks still held after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns every status as a response (the tests look at 4xx bodies).
fn client() -> ureq::Agent {
    let config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).http_status_as_error(false);
    config.build().into()
}

fn get_text(url: &str) -> String {
    client().get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

/// The `data:` payloads of a server-sent-events body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data line: {e:?}")).to_string())
        .collect()
}

/// A streamed completion's text per choice and each choice's finish reason, checking the
/// stream's shape: JSON chunks, then `[DONE]` last.
pub fn streamed_text(events: &[String], chat: bool) -> (Vec<String>, Vec<String>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let (mut texts, mut finishes) = (Vec::<String>::new(), Vec::<String>::new());
    for e in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(e).unwrap();
        for c in chunk["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finishes.resize(i + 1, String::new());
            }
            let piece = if chat { &c["delta"]["content"] } else { &c["text"] };
            texts[i] += piece.as_str().unwrap_or("");
            if let Some(f) = c["finish_reason"].as_str() {
                finishes[i] = f.to_string();
            }
        }
    }
    (texts, finishes)
}

/// `smelt generate` alone on the same prompt: the text it prints (its final newline removed).
pub fn generate_alone(prompt: &str, max_tokens: usize, sampling: &[&str]) -> String {
    let max = max_tokens.to_string();
    let dir = model_dir().to_str().unwrap().to_string();
    let args =
        [&["generate", "--model", &dir, "--prompt", prompt, "--max-new-tokens", &max, "--quiet"], sampling].concat();
    let (stdout, _) = common::smelt_ok(&args);
    stdout.strip_suffix('\n').unwrap().to_string()
}

/// A completion request.
pub fn completion(prompt: &str, max_tokens: usize, extra: Value) -> Value {
    let mut body = json!({"model": NAME, "prompt": prompt, "max_tokens": max_tokens});
    merge(&mut body, extra);
    body
}

pub fn merge(body: &mut Value, extra: Value) {
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
}
