//! Chat template rendering, matching HF `tokenizer.apply_chat_template`.
//!
//! Model repos ship their prompt format as a Jinja template written for
//! Python's jinja2. We render it with minijinja configured like HF's
//! environment (`trim_blocks`, `lstrip_blocks`, loop controls) plus Python
//! string/list methods (`.startswith`, `.split`, ...) from `minijinja-contrib`,
//! so the rendered prompt is byte-identical to what the model was trained on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// Name under which the single template is stored in the environment.
const TEMPLATE_NAME: &str = "chat_template";

/// The most template instructions one render may run: a template comes with the model and may
/// loop for ever (nested `range`s). Qwen3's runs about 50 per message, so this allows
/// conversations of many thousands of turns, and stops a runaway template within a second.
const TEMPLATE_FUEL: u64 = 20_000_000;

/// One turn of a conversation (`role` is `system`, `user`, `assistant`, `tool`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// Convenience constructor.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Everything that can go wrong loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid JSON in {}: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{} has no usable `chat_template` field", path.display())]
    MissingTemplate { path: PathBuf },
    #[error("chat template does not compile: {0:#}")]
    Compile(#[source] JinjaError),
    #[error("the chat template in {} does not compile: {source:#}", path.display())]
    CompileIn { path: PathBuf, source: JinjaError },
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] JinjaError),
    #[error("message {index} has role {role:?}; expected one of {}", ROLES.join(", "))]
    UnknownRole { index: usize, role: String },
}

/// The roles chat templates know. Qwen3's template drops a message with any other role
/// without a word, so one is refused instead.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// A compiled chat template plus the special tokens HF exposes to it.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... from `tokenizer_config.json`; HF passes
    /// these to every render, and some templates use them.
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("special_tokens", &self.special_tokens).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template; a syntax error is reported here, not
    /// at first render.
    pub fn new(source: String) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        // jinja2 settings used by transformers' `_compile_jinja_template`.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template_owned(TEMPLATE_NAME, source).map_err(ChatError::Compile)?;
        Ok(ChatTemplate { env, special_tokens: BTreeMap::new() })
    }

    /// Loads the `chat_template` field of a `tokenizer_config.json`.
    pub fn from_tokenizer_config(path: &Path) -> Result<ChatTemplate, ChatError> {
        let config = read_json(path)?;
        let source = template_source(&config).ok_or_else(|| ChatError::MissingTemplate { path: path.to_path_buf() })?;
        let mut template = ChatTemplate::new(source)?;
        template.special_tokens = special_tokens(&config);
        Ok(template)
    }

    /// Finds a model directory's template: `chat_template.jinja` wins over
    /// `tokenizer_config.json`'s field, as in recent `transformers`. `None`
    /// when the directory has neither (a base model without a chat format).
    pub(crate) fn from_model_dir(dir: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let config_path = dir.join("tokenizer_config.json");
        let present = |p: &Path| smelt_runtime::files::exists(p);
        let config = if present(&config_path) { Some(read_json(&config_path)?) } else { None };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, origin) = if present(&jinja_path) {
            let text = smelt_runtime::files::read_metadata(&jinja_path);
            (Some(text.map_err(|source| ChatError::Read { path: jinja_path.clone(), source })?), jinja_path)
        } else {
            (config.as_ref().and_then(template_source), config_path)
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let mut template = ChatTemplate::new(source).map_err(|e| match e {
            ChatError::Compile(source) => ChatError::CompileIn { path: origin, source },
            other => other,
        })?;
        template.special_tokens = config.as_ref().map(special_tokens).unwrap_or_default();
        Ok(Some(template))
    }

    /// Renders `messages` into a prompt string.
    ///
    /// `enable_thinking` None = not passed to the template (Qwen3 then thinks).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String, ChatError> {
        if let Some((index, m)) = messages.iter().enumerate().find(|(_, m)| !ROLES.contains(&m.role.as_str())) {
            return Err(ChatError::UnknownRole { index, role: m.role.clone() });
        }
        let template = self.env.get_template(TEMPLATE_NAME).map_err(ChatError::Render)?;
        let mut ctx: BTreeMap<&str, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.as_str(), Value::from(v.as_str()))).collect();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        if let Some(thinking) = enable_thinking {
            ctx.insert("enable_thinking", Value::from(thinking));
        }
        template.render(ctx).map_err(ChatError::Render)
    }
}

/// `raise_exception(msg)`, which HF templates call to reject bad input.
fn raise_exception(msg: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

fn read_json(path: &Path) -> Result<serde_json::Value, ChatError> {
    let text = smelt_runtime::files::read_metadata(path)
        .map_err(|source| ChatError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| ChatError::Json { path: path.to_path_buf(), source })
}

/// The template source: either a string, or HF's list of named templates
/// (`[{"name": "default", "template": ...}, ...]`) from which we take "default".
fn template_source(config: &serde_json::Value) -> Option<String> {
    match config.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// Special tokens given as a string or as an `AddedToken` object `{content}`.
fn special_tokens(config: &serde_json::Value) -> BTreeMap<String, String> {
    ["bos_token", "eos_token", "unk_token", "pad_token"]
        .into_iter()
        .filter_map(|key| {
            let v = config.get(key)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            Some((key.to_owned(), s.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3() -> ChatTemplate {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/qwen3/tokenizer_config.json");
        ChatTemplate::from_tokenizer_config(Path::new(path)).expect("Qwen3 template loads")
    }

    #[test]
    fn compile_error_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}".into()).expect_err("must fail");
        assert!(matches!(err, ChatError::Compile(_)), "{err:?}");
        assert!(err.to_string().contains("does not compile"), "{err}");
    }

    #[test]
    fn missing_config_names_path() {
        let err = ChatTemplate::from_tokenizer_config(Path::new("/nonexistent/tokenizer_config.json"))
            .expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/tokenizer_config.json"), "{err}");
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel_and_a_long_chat_does_not() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into(),
        )
        .expect("compiles");
        let err = t.render(&[], false, None).expect_err("must stop");
        assert!(err.to_string().contains("fuel"), "{err}");
        // Qwen3's own template over 10,000 turns stays well within the fuel.
        let turns: Vec<ChatMessage> = (0..10_000)
            .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, format!("turn {i}")))
            .collect();
        let prompt = qwen3().render(&turns, true, None).expect("renders");
        assert!(prompt.contains("turn 9999"));
    }

    #[test]
    fn raise_exception_fails_render() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}".into()).expect("compiles");
        let err = t.render(&[], false, None).expect_err("must fail");
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn qwen3_generation_prompt_and_thinking_switch() {
        let t = qwen3();
        let msgs = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        let base = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(t.render(&msgs, true, None).expect("render"), base);
        assert_eq!(t.render(&msgs, true, Some(true)).expect("render"), base);
        let no_think = t.render(&msgs, true, Some(false)).expect("render");
        assert_eq!(no_think, format!("{base}<think>\n\n</think>\n\n"));
    }

    #[test]
    fn qwen3_strips_reasoning_from_history() {
        let t = qwen3();
        let msgs = [
            ChatMessage::new("user", "1+1?"),
            ChatMessage::new("assistant", "<think>\nadd\n</think>\n\n2"),
            ChatMessage::new("user", "2+2?"),
        ];
        let out = t.render(&msgs, false, None).expect("render");
        assert_eq!(
            out,
            "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        );
    }
}
