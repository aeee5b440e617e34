//! `smelt chat --model DIR`: a conversation on stdin, each reply streamed to stdout as it is
//! generated. Lines starting with `/` are commands: `/reset` forgets the conversation, `/exit`
//! (or end of input) quits, `/help` lists them. Piped input works the same: one user turn per
//! line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use smelt::models::ChatMessage;
use smelt::{FinishReason, GenerateParams, Model};

use super::chat_input::{catch_ctrl_c, reply_starts, stop_requested, Input, Turn};
use super::generate::{describe_sampling, sampling_defaults, BackendArgs, SamplingArgs};
use super::stats::RunClock;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory with tokenizer.json and a chat template.
    #[arg(long)]
    model: PathBuf,
    /// tokenizer.json to use instead of the model directory's (its folder's chat template
    /// first, else the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A system message that opens the conversation (kept across /reset).
    #[arg(long)]
    system: Option<String>,
    /// Ask Qwen3 to answer without thinking first (`enable_thinking=false`).
    #[arg(long)]
    no_think: bool,
    /// The longest reply, in tokens.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    backend: BackendArgs,
}

const HELP: &str = "commands: /reset forgets the conversation, /exit quits (so does end of input), /help shows this; \
     Ctrl-C stops a reply, twice at the prompt quits; arrows edit the line and recall earlier ones";

pub fn run(a: Args) -> Result<()> {
    let defaults = sampling_defaults(&a.model)?;
    let sampling = a.sampling.params(defaults.as_ref())?;
    a.sampling.refuse_unused(&sampling)?;
    let dir = super::model_dir_arg(&a.model)?;
    let tokenizer = smelt::load_tokenizer(&dir, a.tokenizer.as_deref())?.with_context(|| {
        format!("smelt chat needs a tokenizer: {} has no tokenizer.json (pass --tokenizer FILE)", dir.display())
    })?;
    if tokenizer.chat_template().is_none() {
        bail!(
            "no chat template (tokenizer_config.json or chat_template.jinja) beside the tokenizer or in {}",
            dir.display()
        );
    }
    let mut model = a.backend.load(&dir, &a.backend.options(), Some(tokenizer))?;
    // A reply ends at EOS without showing it (`<|im_end|>` is not part of the reply).
    tracing::info!("{}", describe_sampling(&sampling, defaults.as_ref()));
    let params = GenerateParams {
        max_new_tokens: a.max_new_tokens,
        sampling: Some(sampling),
        stop: Vec::new(),
        hide_eos_text: true,
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        catch_ctrl_c()?;
        eprintln!("smelt chat with {}. {HELP}.", dir.display());
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut input = Input::new(interactive)?;
    let (mut turns, mut failed) = (0usize, 0usize);
    let mut interrupted = false;
    loop {
        let line = match input.next()? {
            Turn::End => break,
            // A second Ctrl-C in a row at the prompt quits.
            Turn::Interrupt if interrupted => break,
            Turn::Interrupt => {
                interrupted = true;
                eprintln!("(Ctrl-C again to quit, or /exit)");
                continue;
            }
            Turn::Line(line) => line,
        };
        interrupted = false;
        let text = line.as_str();
        match command(text, &mut history) {
            Line::Done => continue,
            Line::Quit => break,
            Line::Message => {}
        }
        history.push(ChatMessage::new("user", text));
        let mut messages: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s.as_str())).collect();
        messages.extend(history.iter().cloned());
        turns += 1;
        match reply(&mut model, &messages, a.no_think.then_some(false), &params) {
            Ok(text) => history.push(ChatMessage::new("assistant", text)),
            Err(e) => {
                // The turn is dropped; the conversation before it goes on.
                history.pop();
                failed += 1;
                eprintln!("error: {e:#}");
                if matches!(e.downcast_ref(), Some(smelt::Error::Model(smelt::models::ModelError::ContextFull { .. })))
                {
                    eprintln!("(the conversation no longer fits the context: /reset starts a new one)");
                }
            }
        }
    }
    // Interactively, a failed turn was seen and the conversation went on; a script reading
    // the exit status must learn that some of its messages got no reply.
    if failed > 0 && !interactive {
        bail!("{failed} of {turns} turns failed (their errors are above)");
    }
    Ok(())
}

/// What a line of input was.
enum Line {
    /// A command that has been carried out (or an empty line).
    Done,
    Quit,
    /// The user's next message.
    Message,
}

/// Carries out `text` if it is a command (`/reset`, `/help`, ...).
fn command(text: &str, history: &mut Vec<ChatMessage>) -> Line {
    match text.trim() {
        "" => Line::Done,
        "/exit" | "/quit" => Line::Quit,
        "/reset" => {
            history.clear();
            eprintln!("(conversation cleared)");
            Line::Done
        }
        "/help" => {
            eprintln!("{HELP}");
            Line::Done
        }
        command if command.starts_with('/') => {
            eprintln!("unknown command {command}; {HELP}");
            Line::Done
        }
        _ => Line::Message,
    }
}

/// Generates the assistant's reply to `messages`, streaming its text to stdout; returns the
/// text.
fn reply(
    model: &mut Model,
    messages: &[ChatMessage],
    enable_thinking: Option<bool>,
    params: &GenerateParams,
) -> Result<String> {
    let mut clock = RunClock::start();
    reply_starts();
    let mut generation = model.chat(messages, enable_thinking, params)?;
    clock.prompt_done();
    let mut stdout = std::io::stdout().lock();
    let (mut text, mut stopped) = (String::new(), false);
    for chunk in &mut generation {
        let chunk = chunk?;
        clock.token();
        let _ = stdout.write_all(chunk.text.as_bytes()).and_then(|()| stdout.flush());
        text.push_str(&chunk.text);
        // Ctrl-C: the reply so far stays in the conversation, as it was shown.
        if stop_requested() {
            stopped = true;
            break;
        }
    }
    let _ = writeln!(stdout);
    if let Some(e) = generation.warning() {
        tracing::warn!("not shown: {e}");
    }
    let finish =
        if stopped { "interrupted" } else { generation.finish_reason().map_or("length", FinishReason::as_str) };
    tracing::info!("[{}]", clock.summary(generation.prompt_tokens(), finish));
    Ok(text)
}
