//! Where `smelt chat` reads the user's turns: a line editor on a terminal (arrows, history,
//! Ctrl-C), plain lines from a pipe. And the Ctrl-C that stops a reply being generated.

use std::io::{BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use rustyline::error::ReadlineError;

/// The longest line read from a pipe: far more than any context holds, and a bound on what an
/// endless line (`smelt chat < /dev/zero`) can take.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// What the user did at the prompt.
pub enum Turn {
    Line(String),
    /// Ctrl-C at the prompt (a terminal only).
    Interrupt,
    /// End of input (Ctrl-D, or the pipe's end).
    End,
}

pub enum Input {
    /// A terminal: rustyline, with this session's history.
    Editor(rustyline::DefaultEditor),
    /// A pipe or file: one turn per line.
    Lines { stdin: std::io::StdinLock<'static>, read: usize },
}

impl Input {
    /// The line editor on a terminal, plain lines otherwise.
    pub fn new(terminal: bool) -> Result<Input> {
        if terminal {
            let editor = rustyline::DefaultEditor::new().context("starting the line editor")?;
            Ok(Input::Editor(editor))
        } else {
            Ok(Input::Lines { stdin: std::io::stdin().lock(), read: 0 })
        }
    }

    pub fn next(&mut self) -> Result<Turn> {
        match self {
            Input::Editor(editor) => match editor.readline(">>> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        // A history entry that fails to save costs the arrow keys that line.
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Ok(Turn::Line(line))
                }
                Err(ReadlineError::Interrupted) => Ok(Turn::Interrupt),
                Err(ReadlineError::Eof) => Ok(Turn::End),
                Err(e) => Err(e).context("reading the terminal"),
            },
            Input::Lines { stdin, read } => {
                let mut line = String::new();
                let got = stdin.by_ref().take(MAX_LINE_BYTES).read_line(&mut line);
                if got.with_context(|| format!("reading stdin (line {})", *read + 1))? == 0 {
                    return Ok(Turn::End);
                }
                *read += 1;
                if line.len() as u64 == MAX_LINE_BYTES && !line.ends_with('\n') {
                    bail!("stdin line {read} is longer than {MAX_LINE_BYTES} bytes");
                }
                Ok(Turn::Line(line.trim_end_matches(['\n', '\r']).to_string()))
            }
        }
    }
}

/// Set by Ctrl-C while a reply is generated (the line editor owns Ctrl-C at the prompt).
static STOP_REPLY: AtomicBool = AtomicBool::new(false);

/// On a terminal, Ctrl-C stops the reply being generated instead of the program.
pub fn catch_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| STOP_REPLY.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")
}

/// Forgets a Ctrl-C pressed before the reply started.
pub fn reply_starts() {
    STOP_REPLY.store(false, Ordering::SeqCst);
}

/// Whether Ctrl-C asked to stop the reply (once).
pub fn stop_requested() -> bool {
    STOP_REPLY.swap(false, Ordering::SeqCst)
}
