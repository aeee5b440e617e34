//! `smelt chat --model DIR`: a conversation on stdin, each reply streamed to stdout as it is
//! generated. Lines starting with `/` are commands: `/reset` forgets the conversation, `/exit`
//! (or end of input) quits, `/help` lists them. Piped input works the same: one user turn per
//! line.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use smelt::models::{
    generate as run_generation, CausalLm, ChatMessage, Continuation, Request, SamplingParams, Tokenizer,
};

use super::generate::{BackendArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model directory with tokenizer.json and a chat template.
    #[arg(long)]
    model: PathBuf,
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

/// The longest line read from stdin: far more than any context holds, and a bound on what an
/// endless line (`smelt chat < /dev/zero`) can take.
const MAX_LINE_BYTES: u64 = 16 << 20;

const HELP: &str = "commands: /reset forgets the conversation, /exit quits (so does end of input), /help shows this";

pub fn run(a: Args) -> Result<()> {
    let sampling = a.sampling.params()?;
    a.sampling.refuse_unused()?;
    let dir = super::model_dir_arg(&a.model)?;
    let tokenizer = Tokenizer::from_model_dir(&dir)
        .with_context(|| format!("smelt chat needs the tokenizer and chat template of {}", dir.display()))?;
    let template = tokenizer.chat_template().with_context(|| {
        format!("{} has no chat template (tokenizer_config.json or chat_template.jinja)", dir.display())
    })?;
    let mut model = a.backend.load(&dir)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("smelt chat with {}. {HELP}.", dir.display());
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut input = std::io::stdin().lock();
    let mut lines = 0usize;
    let (mut turns, mut failed) = (0usize, 0usize);
    loop {
        if interactive {
            eprint!(">>> ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        let read = input.by_ref().take(MAX_LINE_BYTES).read_line(&mut line);
        if read.with_context(|| format!("reading stdin (line {})", lines + 1))? == 0 {
            break;
        }
        lines += 1;
        if line.len() as u64 == MAX_LINE_BYTES && !line.ends_with('\n') {
            bail!("stdin line {lines} is longer than {MAX_LINE_BYTES} bytes");
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            command if command.starts_with('/') => {
                eprintln!("unknown command {command}; {HELP}");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new("user", text));
        let mut messages: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::new("system", s.as_str())).collect();
        messages.extend(history.iter().cloned());
        let prompt = template.render(&messages, true, a.no_think.then_some(false))?;
        let ids = tokenizer.encode(&prompt)?;
        turns += 1;
        match reply(model.as_mut(), &tokenizer, &ids, a.max_new_tokens, &sampling) {
            Ok(text) => history.push(ChatMessage::new("assistant", text)),
            Err(e) => {
                // The turn is dropped; the conversation before it goes on.
                history.pop();
                failed += 1;
                eprintln!("error: {e:#}");
                if matches!(e.downcast_ref(), Some(smelt::models::ModelError::ContextFull { .. })) {
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

/// Generates the assistant's reply to `ids` (the rendered conversation), streaming its text to
/// stdout; returns the text. EOS ids end the reply and are not shown.
fn reply(
    model: &mut dyn CausalLm,
    tokenizer: &Tokenizer,
    ids: &[u32],
    max_new_tokens: usize,
    sampling: &SamplingParams,
) -> Result<String> {
    let request = Request { prompt: ids.to_vec(), max_new_tokens, sampling: sampling.clone(), stop: Vec::new() };
    let seq = Continuation::new(&request, Some(tokenizer)).without_eos_text();
    let mut stdout = std::io::stdout().lock();
    let mut show = |piece: &str| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    };
    let t0 = Instant::now();
    let out = run_generation(model, ids, seq, |_, step| {
        show(&step.text);
        if let Some((_, tail)) = &step.end {
            show(tail);
        }
    })?;
    let _ = writeln!(stdout);
    if let Some(e) = &out.warning {
        tracing::warn!("not shown: {e}");
    }
    let text = out.text;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "[{} prompt tokens, {} generated in {secs:.2}s, {:.1} tokens/s]",
        ids.len(),
        out.ids.len(),
        out.ids.len() as f64 / secs.max(1e-9)
    );
    Ok(text)
}
