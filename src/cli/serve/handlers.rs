//! The endpoints. A generation request is checked, admitted (or answered 429), submitted to
//! the engine, and answered whole or as a stream; dropping its answer early (the client went
//! away) cancels its sequences through [`Inflight`]'s drop.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use smelt::models::batch::{SeqId, SeqOptions};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::OwnedSemaphorePermit;

use super::engine::{Command, Event, Submission};
use super::errors::{parse_body, ApiError};
use super::protocol::{Endpoint, GenerationBody, Message};
use super::responses::Reply;
use super::AppState;

/// A submitted request's sequences until they end; dropped early, it cancels the rest.
struct Inflight {
    engine: std::sync::mpsc::Sender<Command>,
    first: SeqId,
    open: Vec<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Inflight {
    fn ended(&mut self, event: &Event) {
        if let Event::Finished { choice, .. } = event {
            if let Some(open) = self.open.get_mut(*choice) {
                *open = false;
            }
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let open: Vec<SeqId> = (0..self.open.len()).filter(|&i| self.open[i]).map(|i| self.first + i).collect();
        if !open.is_empty() {
            // The engine may be gone already (shutting down): nothing left to cancel then.
            let _ = self.engine.send(Command::Cancel(open));
        }
    }
}

pub async fn chat(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    generate(state, Endpoint::Chat, body).await
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    generate(state, Endpoint::Completions, body).await
}

async fn generate(state: Arc<AppState>, endpoint: Endpoint, body: Bytes) -> Result<Response, ApiError> {
    let received = Instant::now();
    let job = parse_body::<GenerationBody>(&body)?.into_job(endpoint, &state.info)?;
    let n = job.choices.len();
    if n > state.capacity {
        return Err(ApiError::invalid("n", format!("n is more than this server runs at once ({})", state.capacity)));
    }
    let permit =
        state.admission.clone().try_acquire_many_owned(n as u32).map_err(|_| ApiError::overloaded(state.capacity))?;
    let first = state.next_seq.fetch_add(n, Ordering::Relaxed);
    let (events, mut rx) = unbounded_channel();
    let options = SeqOptions { hide_eos_text: true, top_logprobs: job.top_logprobs };
    let submission = Submission { first, requests: job.choices.clone(), options, events, received };
    state.engine.send(Command::Submit(submission)).map_err(|_| ApiError::shutting_down())?;
    let inflight = Inflight { engine: state.engine.clone(), first, open: vec![true; n], _permit: permit };
    match rx.recv().await {
        Some(Event::Accepted) => {}
        Some(Event::Rejected(message)) => {
            let param = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
            return Err(ApiError::invalid(param, message));
        }
        _ => return Err(ApiError::shutting_down()),
    }
    state.metrics.prompt_tokens(job.prompt_tokens);
    let reply = Reply::new(&job, first as u64, state.info.clone(), state.reasoning);
    if job.stream {
        Ok(stream(reply, job.include_usage, rx, inflight))
    } else {
        whole(reply, rx, inflight).await
    }
}

async fn whole(
    mut reply: Reply,
    mut rx: UnboundedReceiver<Event>,
    mut inflight: Inflight,
) -> Result<Response, ApiError> {
    while !reply.finished() {
        match rx.recv().await {
            Some(Event::Failed(message)) => return Err(ApiError::internal(message)),
            Some(event) => {
                inflight.ended(&event);
                reply.take(event);
            }
            None => return Err(ApiError::shutting_down()),
        }
    }
    Ok(Json(reply.whole()).into_response())
}

/// What a stream holds between chunks.
struct Streaming {
    reply: Reply,
    include_usage: bool,
    rx: UnboundedReceiver<Event>,
    inflight: Inflight,
    queued: VecDeque<String>,
    done: bool,
}

impl Streaming {
    /// Waits for the engine's next event and queues what it shows.
    async fn next(&mut self) {
        let event = self.rx.recv().await;
        let failure = match event {
            Some(Event::Failed(message)) => ApiError::internal(message),
            None => ApiError::shutting_down(),
            Some(event) => {
                self.inflight.ended(&event);
                if let Some(mut chunk) = self.reply.take(event) {
                    if self.include_usage {
                        chunk["usage"] = Value::Null;
                    }
                    self.queued.push_back(sse(&chunk));
                }
                if self.reply.finished() {
                    if self.include_usage {
                        self.queued.push_back(sse(&self.reply.usage_chunk()));
                    }
                    self.queued.push_back("data: [DONE]\n\n".into());
                    self.done = true;
                }
                return;
            }
        };
        self.queued.push_back(sse(&failure.json()));
        self.queued.push_back("data: [DONE]\n\n".into());
        self.done = true;
    }
}

fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// Server-sent events: a `data: {chunk}` per token, the usage if asked, `data: [DONE]`.
/// The body owns the request's [`Inflight`]: when the client goes away, the server drops
/// the body, which cancels the sequences.
fn stream(reply: Reply, include_usage: bool, rx: UnboundedReceiver<Event>, inflight: Inflight) -> Response {
    let streaming = Streaming { reply, include_usage, rx, inflight, queued: VecDeque::new(), done: false };
    let body = futures_util::stream::unfold(streaming, |mut s| async move {
        loop {
            if let Some(text) = s.queued.pop_front() {
                return Some((Ok::<Bytes, Infallible>(Bytes::from(text)), s));
            }
            if s.done {
                return None;
            }
            s.next().await;
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(body))
        .into_response()
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.info.name, "object": "model", "created": state.started, "owned_by": "smelt",
        "max_model_len": state.info.context,
    }]}))
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

#[derive(Deserialize)]
struct TokenizeBody {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    add_generation_prompt: Option<bool>,
    chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

/// `{"prompt": TEXT}`, or `{"messages": [...]}` through the chat template, as token ids.
pub async fn tokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: TokenizeBody = parse_body(&body)?;
    let tokenizer = &state.info.tokenizer;
    let tokens = match (body.prompt, body.messages) {
        (Some(text), None) => tokenizer.encode(&text).map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
        (None, Some(messages)) => {
            let chat = GenerationBody {
                messages: Some(messages),
                chat_template_kwargs: body.chat_template_kwargs,
                ..GenerationBody::default()
            };
            chat.render_chat(&state.info, body.add_generation_prompt.unwrap_or(true))?
        }
        _ => return Err(ApiError::invalid("prompt", "give exactly one of prompt and messages")),
    };
    Ok(Json(json!({"count": tokens.len(), "max_model_len": state.info.context, "tokens": tokens})))
}

#[derive(Deserialize)]
struct DetokenizeBody {
    tokens: Vec<u32>,
}

/// `{"tokens": [ids]}` as text.
pub async fn detokenize(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: DetokenizeBody = parse_body(&body)?;
    let vocab = state.info.tokenizer.vocab_size();
    if let Some(id) = body.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::invalid("tokens", format!("token id {id} is out of range (vocabulary of {vocab})")));
    }
    let text =
        state.info.tokenizer.decode(&body.tokens, false).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({ "prompt": text })))
}
