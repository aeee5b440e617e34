//! The answers of `/v1/chat/completions` and `/v1/completions`, whole or as server-sent
//! events: [`Reply`] turns the engine's events into OpenAI's JSON, per choice.

use serde_json::{json, Value};
use smelt::models::batch::TokenLogprobs;
use smelt::models::FinishReason;

use std::sync::Arc;

use super::engine::Event;
use super::protocol::{Endpoint, Job};
use super::reasoning::ReasoningSplitter;
use super::ServerInfo;

/// The log-probability JSON can carry for an impossible token (JSON has no -inf).
const MIN_LOGPROB: f32 = -9999.0;

/// One choice as it is generated.
#[derive(Default)]
struct Choice {
    content: String,
    reasoning: String,
    tokens: usize,
    /// Chat: OpenAI's `logprobs.content` entries; completions: per-token entries folded into
    /// the legacy layout at the end.
    logprobs: Vec<(String, TokenLogprobs, usize)>,
    finish: Option<FinishReason>,
    splitter: Option<ReasoningSplitter>,
    /// Streaming: the role has been sent.
    started: bool,
}

/// A request's answer being built.
pub struct Reply {
    endpoint: Endpoint,
    id: String,
    created: u64,
    info: Arc<ServerInfo>,
    prompt_tokens: usize,
    logprobs: bool,
    choices: Vec<Choice>,
}

impl Reply {
    pub fn new(job: &Job, serial: u64, info: Arc<ServerInfo>, reasoning: bool) -> Reply {
        let prefix = match job.endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let splitter = || (reasoning && job.endpoint == Endpoint::Chat).then(ReasoningSplitter::default);
        Reply {
            endpoint: job.endpoint,
            id: format!("{prefix}-{serial}"),
            created,
            info,
            prompt_tokens: job.prompt_tokens,
            logprobs: job.top_logprobs.is_some(),
            choices: (0..job.choices.len()).map(|_| Choice { splitter: splitter(), ..Choice::default() }).collect(),
        }
    }

    pub fn finished(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Takes a token or an end; for a stream, returns the chunk to send (None: nothing new to
    /// show yet). Events of other kinds are the caller's.
    pub fn take(&mut self, event: Event) -> Option<Value> {
        let (choice, text, logprobs, finish) = match event {
            Event::Token { choice, text, logprobs } => (choice, text, logprobs, None),
            Event::Finished { choice, text, finish } => (choice, text, None, Some(finish)),
            _ => return None,
        };
        let c = self.choices.get_mut(choice)?;
        let (reasoning, mut content) = match c.splitter.as_mut() {
            Some(s) => {
                let mut split = s.push(&text);
                if finish.is_some() {
                    let rest = s.finish();
                    split.reasoning += &rest.reasoning;
                    split.content += &rest.content;
                }
                (split.reasoning, split.content)
            }
            None => (String::new(), text),
        };
        let mut lp_entries = Vec::new();
        if let Some(lp) = logprobs {
            c.tokens += 1;
            if self.logprobs {
                let token = self.info.tokenizer.decode(&[lp.token], false).unwrap_or_default();
                lp_entries.push((token, lp, c.content.len()));
            }
        } else if finish.is_none() {
            c.tokens += 1;
        }
        c.content += &content;
        c.reasoning += &reasoning;
        c.finish = finish;
        let first = !c.started;
        c.started = true;
        if reasoning.is_empty() && content.is_empty() && lp_entries.is_empty() && finish.is_none() && !first {
            c.logprobs.extend(lp_entries);
            return None;
        }
        let lp_json = (!lp_entries.is_empty()).then(|| self.logprobs_json(&lp_entries));
        self.choices[choice].logprobs.extend(lp_entries);
        let finish_reason = finish.map(finish_reason);
        let body = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = "assistant".into();
                    delta["content"] = "".into();
                }
                if !content.is_empty() || (lp_json.is_some() && reasoning.is_empty()) {
                    delta["content"] = std::mem::take(&mut content).into();
                }
                if !reasoning.is_empty() {
                    delta["reasoning_content"] = reasoning.into();
                }
                json!({"index": choice, "delta": delta, "logprobs": lp_json, "finish_reason": finish_reason})
            }
            Endpoint::Completions => {
                json!({"index": choice, "text": content, "logprobs": lp_json, "finish_reason": finish_reason})
            }
        };
        Some(self.envelope(vec![body]))
    }

    /// A chunk of a stream, or a whole answer, around `choices`.
    fn envelope(&self, choices: Vec<Value>) -> Value {
        let object = match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.info.name, "choices": choices})
    }

    pub fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(|c| c.tokens).sum();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
               "total_tokens": self.prompt_tokens + completion})
    }

    /// The last chunk of a stream with `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self) -> Value {
        let mut chunk = self.envelope(Vec::new());
        chunk["usage"] = self.usage();
        chunk
    }

    /// The whole answer (not streamed).
    pub fn whole(&self) -> Value {
        let choices = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let logprobs = self.logprobs.then(|| self.logprobs_json(&c.logprobs));
                let finish_reason = c.finish.map(finish_reason);
                match self.endpoint {
                    Endpoint::Chat => {
                        let mut message = json!({"role": "assistant", "content": c.content});
                        if c.splitter.is_some() {
                            message["reasoning_content"] =
                                if c.reasoning.is_empty() { Value::Null } else { c.reasoning.clone().into() };
                        }
                        json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish_reason})
                    }
                    Endpoint::Completions => {
                        json!({"index": i, "text": c.content, "logprobs": logprobs, "finish_reason": finish_reason})
                    }
                }
            })
            .collect();
        let mut whole = self.envelope(choices);
        whole["object"] = match self.endpoint {
            Endpoint::Chat => "chat.completion",
            Endpoint::Completions => "text_completion",
        }
        .into();
        whole["usage"] = self.usage();
        whole
    }

    /// Chat: `{"content": [{token, logprob, bytes, top_logprobs}]}`; completions: the legacy
    /// `{tokens, token_logprobs, top_logprobs, text_offset}`.
    fn logprobs_json(&self, entries: &[(String, TokenLogprobs, usize)]) -> Value {
        let token_text = |id: u32| self.info.tokenizer.decode(&[id], false).unwrap_or_default();
        let lp = |x: f32| x.max(MIN_LOGPROB);
        match self.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = entries
                    .iter()
                    .map(|(token, l, _)| {
                        let top: Vec<Value> = l
                            .top
                            .iter()
                            .map(|&(id, x)| {
                                let t = token_text(id);
                                json!({"token": t, "logprob": lp(x), "bytes": t.as_bytes()})
                            })
                            .collect();
                        json!({"token": token, "logprob": lp(l.logprob), "bytes": token.as_bytes(), "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Endpoint::Completions => {
                let tops: Vec<Value> = entries
                    .iter()
                    .map(|(_, l, _)| {
                        let map: serde_json::Map<String, Value> =
                            l.top.iter().map(|&(id, x)| (token_text(id), json!(lp(x)))).collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>(),
                    "token_logprobs": entries.iter().map(|e| lp(e.1.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": tops,
                    "text_offset": entries.iter().map(|e| e.2).collect::<Vec<_>>(),
                })
            }
        }
    }
}

/// OpenAI's `finish_reason`: an EOS or a stop string is `stop`; running out of tokens or
/// of context is `length`.
fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}
