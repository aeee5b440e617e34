//! OpenAI's request bodies (`/v1/chat/completions`, `/v1/completions`) and their checking:
//! a body becomes a [`Job`] for the engine, or a 400 naming the field at fault.

use serde::Deserialize;
use smelt::models::{check_stops, ChatMessage, Request, SamplingParams};

use super::errors::ApiError;
use super::ServerInfo;

/// The most choices (`n`) one request may ask for.
pub const MAX_N: u64 = 64;
/// The most alternatives per token (`top_logprobs`), as OpenAI allows.
pub const MAX_TOP_LOGPROBS: u64 = 20;
/// The most stop strings one request may give.
const MAX_STOPS: usize = 16;
/// `max_tokens` of a completion that sets none (OpenAI's default for `/v1/completions`).
const COMPLETION_DEFAULT_MAX_TOKENS: usize = 16;

/// The fields of both endpoints; each endpoint checks which it needs. Unknown fields are
/// ignored, as OpenAI's clients send some that do not apply here.
#[derive(Debug, Default, Deserialize)]
pub struct GenerationBody {
    pub model: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub prompt: Option<PromptInput>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stops>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// `true`/`false` on chat, a count of alternatives on completions.
    pub logprobs: Option<serde_json::Value>,
    pub top_logprobs: Option<u64>,
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stops {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A checked request: what the engine runs and how the answer is written.
#[derive(Debug)]
pub struct Job {
    pub endpoint: Endpoint,
    pub prompt_tokens: usize,
    /// One request per choice (`n`), each with its own seed.
    pub choices: Vec<Request>,
    pub top_logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

impl GenerationBody {
    /// Checks the body for `endpoint` and builds the engine's requests.
    pub fn into_job(self, endpoint: Endpoint, info: &ServerInfo) -> Result<Job, ApiError> {
        if let Some(model) = self.model.as_deref().filter(|m| *m != info.name) {
            return Err(ApiError::invalid(
                "model",
                format!("unknown model {model:?}: this server has {:?}", info.name),
            ));
        }
        self.refuse_unsupported()?;
        let (prompt, prompt_param) = match endpoint {
            Endpoint::Chat => (self.chat_prompt(info)?, "messages"),
            Endpoint::Completions => (self.completion_prompt(info)?, "prompt"),
        };
        let context = info.context;
        if prompt.is_empty() {
            return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
        }
        if prompt.len() >= context {
            return Err(ApiError::invalid(
                prompt_param,
                format!("the prompt is {} tokens; the model's context is {context} tokens", prompt.len()),
            ));
        }
        let max_new_tokens = self.max_new_tokens(endpoint, context - prompt.len())?;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ApiError::invalid("n", format!("n must be in 1..={MAX_N}, got {n}")));
        }
        let sampling = self.sampling(info.sampling_defaults.as_ref())?;
        let stop = self.stops()?;
        let top_logprobs = self.top_logprobs(endpoint)?;
        let choices = (0..n)
            .map(|i| Request {
                prompt: prompt.clone(),
                max_new_tokens,
                sampling: SamplingParams { seed: sampling.seed.wrapping_add(i), ..sampling.clone() },
                stop: stop.clone(),
            })
            .collect();
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        Ok(Job {
            endpoint,
            prompt_tokens: prompt.len(),
            choices,
            top_logprobs,
            stream: self.stream.unwrap_or(false),
            include_usage,
        })
    }

    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.frequency_penalty.is_some_and(|f| f != 0.0) {
            return Err(ApiError::invalid(
                "frequency_penalty",
                "frequency_penalty is not supported (use presence_penalty or repetition_penalty)",
            ));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if self.suffix.is_some() {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        if self.best_of.is_some_and(|b| b > 1) {
            return Err(ApiError::invalid("best_of", "best_of is not supported"));
        }
        Ok(())
    }

    fn chat_prompt(&self, info: &ServerInfo) -> Result<Vec<u32>, ApiError> {
        self.render_chat(info, true)
    }

    /// `messages` through the model's chat template, tokenized.
    pub fn render_chat(&self, info: &ServerInfo, add_generation_prompt: bool) -> Result<Vec<u32>, ApiError> {
        let messages = self.messages.as_ref().ok_or_else(|| ApiError::invalid("messages", "messages is required"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages is empty"));
        }
        let mut turns = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            if !smelt::models::chat::ROLES.contains(&m.role.as_str()) {
                let roles = smelt::models::chat::ROLES.join(", ");
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {:?} (expected one of {roles})", m.role),
                ));
            }
            turns.push(ChatMessage::new(&m.role, content_text(m.content.as_ref(), i)?));
        }
        let template = info
            .tokenizer
            .chat_template()
            .ok_or_else(|| ApiError::invalid("messages", "the model has no chat template: use /v1/completions"))?;
        let thinking = match self.chat_template_kwargs.as_ref().and_then(|k| k.get("enable_thinking")) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(_) => return Err(ApiError::invalid("chat_template_kwargs.enable_thinking", "must be a boolean")),
        };
        let text = template
            .render(&turns, add_generation_prompt, thinking)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        info.tokenizer.encode(&text).map_err(|e| ApiError::invalid("messages", e.to_string()))
    }

    fn completion_prompt(&self, info: &ServerInfo) -> Result<Vec<u32>, ApiError> {
        let several = || ApiError::invalid("prompt", "one prompt per request: send several requests instead");
        let ids = match self.prompt.as_ref().ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))? {
            PromptInput::Text(text) => {
                info.tokenizer.encode(text).map_err(|e| ApiError::invalid("prompt", e.to_string()))?
            }
            PromptInput::Texts(texts) if texts.len() == 1 => {
                info.tokenizer.encode(&texts[0]).map_err(|e| ApiError::invalid("prompt", e.to_string()))?
            }
            PromptInput::Ids(ids) => ids.clone(),
            PromptInput::IdLists(lists) if lists.len() == 1 => lists[0].clone(),
            _ => return Err(several()),
        };
        if let Some(id) = ids.iter().find(|&&id| id as usize >= info.vocab) {
            return Err(ApiError::invalid(
                "prompt",
                format!("token id {id} is out of range (vocabulary of {})", info.vocab),
            ));
        }
        Ok(ids)
    }

    /// `max_completion_tokens` or `max_tokens`, at most `room` (what the context leaves).
    fn max_new_tokens(&self, endpoint: Endpoint, room: usize) -> Result<usize, ApiError> {
        let (param, asked) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => ("max_completion_tokens", Some(m)),
            (None, m) => ("max_tokens", m),
        };
        let Some(asked) = asked else {
            return Ok(match endpoint {
                Endpoint::Chat => room,
                Endpoint::Completions => COMPLETION_DEFAULT_MAX_TOKENS.min(room),
            });
        };
        if asked == 0 || asked > room as u64 {
            return Err(ApiError::invalid(
                param,
                format!("{param} must be in 1..={room} (the context left after the prompt), got {asked}"),
            ));
        }
        Ok(asked as usize)
    }

    /// The request's sampling over the model's defaults (`generation_config.json`); without
    /// a seed, a random one.
    fn sampling(&self, defaults: Option<&SamplingParams>) -> Result<SamplingParams, ApiError> {
        let mut s = defaults.cloned().unwrap_or_default();
        let real = |param: &str, v: f64| {
            if v.is_finite() && v.abs() <= f32::MAX as f64 {
                Ok(v as f32)
            } else {
                Err(ApiError::invalid(param, format!("{param} must be a finite number, got {v}")))
            }
        };
        if let Some(t) = self.temperature {
            s.temperature = real("temperature", t)?;
        }
        if let Some(p) = self.top_p {
            s.top_p = real("top_p", p)?;
        }
        if let Some(p) = self.min_p {
            s.min_p = real("min_p", p)?;
        }
        if let Some(p) = self.presence_penalty {
            s.presence_penalty = real("presence_penalty", p)?;
        }
        if let Some(p) = self.repetition_penalty {
            s.repetition_penalty = real("repetition_penalty", p)?;
        }
        match self.top_k {
            Some(k) if k < -1 => {
                return Err(ApiError::invalid("top_k", format!("top_k must be -1 (off) or >= 0, got {k}")))
            }
            Some(k) => s.top_k = usize::try_from(k).unwrap_or(0),
            None => {}
        }
        // The sampler's own message starts with the field's name.
        s.validate().map_err(|e| ApiError::invalid(e.split(' ').next().unwrap_or("sampling"), e.clone()))?;
        s.seed = match self.seed {
            Some(seed) => seed as u64,
            None => random_seed(),
        };
        Ok(s)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(Stops::One(s)) => vec![s.clone()],
            Some(Stops::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop strings, got {}", stops.len())));
        }
        check_stops(&stops).map_err(|e| ApiError::invalid("stop", e))?;
        Ok(stops)
    }

    /// How many alternatives per token to report; None: no log-probabilities.
    fn top_logprobs(&self, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
        use serde_json::Value;
        let top = match (endpoint, &self.logprobs) {
            (_, None | Some(Value::Null) | Some(Value::Bool(false))) => {
                if self.top_logprobs.is_some_and(|t| t > 0) {
                    return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
                }
                return Ok(None);
            }
            (Endpoint::Chat, Some(Value::Bool(true))) => ("top_logprobs", self.top_logprobs.unwrap_or(0)),
            (Endpoint::Completions, Some(Value::Number(k))) => match k.as_u64() {
                Some(k) => ("logprobs", k),
                None => return Err(ApiError::invalid("logprobs", "logprobs must be a non-negative integer")),
            },
            (Endpoint::Chat, Some(_)) => return Err(ApiError::invalid("logprobs", "logprobs must be a boolean")),
            (Endpoint::Completions, Some(_)) => {
                return Err(ApiError::invalid("logprobs", "logprobs must be an integer"))
            }
        };
        match top {
            (param, k) if k > MAX_TOP_LOGPROBS => {
                Err(ApiError::invalid(param, format!("{param} must be at most {MAX_TOP_LOGPROBS}, got {k}")))
            }
            (_, k) => Ok(Some(k as usize)),
        }
    }
}

/// A message's text: a string, or the text parts of a list (other parts are refused).
fn content_text(content: Option<&Content>, index: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(t)) => Ok(t.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{index}].content[{j}]"),
                            format!("only text parts are supported, got {kind:?}"),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// A seed for a request that gives none: different for every request.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
