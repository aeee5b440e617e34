//! The README's "Try it" block, run as a newcomer would type it (in a fresh folder, with the
//! binary this build made standing in for the installed one), and its copy of the library
//! example checked against `examples/quickstart.rs`, which runs here too.

use std::path::Path;
use std::process::{Command, Stdio};

#[allow(dead_code)] // its main is the example's; the test calls run
#[path = "../examples/quickstart.rs"]
mod quickstart;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

/// The fenced block of `lang` that follows `heading`.
fn block_after(text: &str, heading: &str, lang: &str) -> String {
    let section = &text[text.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"))..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap_or_else(|| panic!("no {lang} block after {heading:?}")) + fence.len();
    let end = start + section[start..].find("```\n").expect("the block ends");
    section[start..end].to_string()
}

/// A shell line's words: double-quoted words may hold spaces; ` # ` starts a comment.
fn words(line: &str) -> Vec<String> {
    let line = line.split(" # ").next().unwrap_or("").trim();
    let (mut words, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    assert!(!quoted, "unbalanced quotes in {line:?}");
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn the_try_it_block_runs_as_written() {
    let block = block_after(&readme(), "## Try it", "sh");
    let lines: Vec<Vec<String>> = block.lines().map(words).filter(|w| !w.is_empty()).collect();
    assert_eq!(lines.len(), 5, "{block}");
    let here = tempfile::tempdir().expect("temp dir");
    for line in &lines {
        match line.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            // Installing is what cargo does; this build's binary stands in for it.
            ["cargo", "install", "--path", "."] => {}
            // The example's code runs below (`run`); here, its arguments.
            ["cargo", "run", "--release", "--example", "quickstart", "--", dir] => {
                quickstart::run(&here.path().join(dir)).expect("the library example runs on the demo model");
            }
            ["smelt", ref args @ ..] => {
                let chat = args.first() == Some(&"chat");
                let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
                    .args(args)
                    .current_dir(here.path())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run smelt");
                // The chat gets one turn, then the documented way out.
                let input = if chat { "Hello!\n/exit\n" } else { "" };
                std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), input.as_bytes()).expect("stdin");
                let out = child.wait_with_output().expect("smelt finishes");
                let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                assert!(out.status.success(), "{line:?} failed:\n{stdout}\n{stderr}");
                if args.first() == Some(&"generate") || chat {
                    assert!(!stdout.trim().is_empty(), "{line:?} printed no text:\n{stderr}");
                }
            }
            _ => panic!("the test does not know how to run {line:?}: teach it, or keep the README to smelt and cargo"),
        }
    }
    assert!(here.path().join("demo/tokenizer.json").is_file(), "random-model wrote the demo folder");
}

#[test]
fn the_readme_shows_the_example_as_it_is() {
    let shown = block_after(&readme(), "## Try it", "rust");
    let file = include_str!("../examples/quickstart.rs");
    assert_eq!(shown, file, "README.md's copy of examples/quickstart.rs is out of date");
}

#[test]
fn the_readme_links_nothing_outside_the_repository() {
    let text = readme();
    for (i, line) in text.lines().enumerate() {
        assert!(!line.contains("../"), "README.md line {}: {line:?} points outside the repository", i + 1);
    }
}
