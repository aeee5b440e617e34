//! Bad input to the `smelt` command line: every case must exit non-zero (not by a signal, not
//! by a panic) with an `error:` on stderr that names the file, field, tensor or id at fault,
//! and must leave no output file (or `.partial` leftover) behind.
//!
//! Damaged models are temporary copies of the fixtures in tests/fixtures/models. One module per
//! class of bad input; the cases of issue 11 (outputs that would land on inputs, sizes beyond
//! reason, non-finite numbers, failing fast and naming the flag) also check that every input
//! is byte-identical afterwards ([`Unchanged`]).

#[path = "../common/mod.rs"]
mod common;
mod config;
mod fail_fast;
mod nonfinite;
mod outputs;
mod paths;
mod prompts;
mod sizes;
mod weights;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture_dir;
use safetensors::Dtype;

/// No error case should take long; a hang is a bug.
const TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `smelt args...` from the repository root with a timeout; returns (exit code, stdout,
/// stderr). Output goes to files so a chatty child cannot block on a full pipe.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let (code, stdout, stderr, _) = run_in(&root(), None, args);
    (code, stdout, stderr)
}

/// [`run`] in folder `cwd`, with `stdin` read from a file (else empty); also returns how long
/// the command took.
fn run_in(cwd: &Path, stdin: Option<&Path>, args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let input = match stdin {
        Some(p) => Stdio::from(std::fs::File::open(p).unwrap()),
        None => Stdio::null(),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .current_dir(cwd)
        .stdin(input)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning smelt {args:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("smelt {args:?} hung for more than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    (status.code(), read(&out_path), read(&err_path), took)
}

/// Runs a command that must fail cleanly and returns its stderr.
fn fails(args: &[&str]) -> String {
    let (code, stdout, stderr) = run(args);
    failed_cleanly(args, code, &stdout, &stderr);
    stderr
}

/// Asserts a run ended with an error: a non-zero exit, no signal, no panic, an `error` line.
fn failed_cleanly(args: &[&str], code: Option<i32>, stdout: &str, stderr: &str) {
    assert!(!stderr.contains("panicked"), "smelt {args:?} panicked:\n{stderr}");
    match code {
        None => panic!("smelt {args:?} was killed by a signal:\n{stderr}"),
        Some(0) => panic!("smelt {args:?} exited 0 on bad input:\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(_) => {}
    }
    assert!(stderr.contains("error"), "smelt {args:?}: no error message on stderr:\n{stderr}");
    eprintln!(
        "=== {}\n{stderr}",
        args.iter().map(|a| if a.len() > 60 { "<long>" } else { a }).collect::<Vec<_>>().join(" ")
    );
}

/// [`fails`], checking that every file under `inputs` (files or folders) is byte-identical
/// afterwards and that no file appeared or vanished among them.
fn fails_keeping(inputs: &[&Path], args: &[&str]) -> String {
    let before = Unchanged::record(inputs);
    let stderr = fails(args);
    before.assert_same();
    stderr
}

/// The bytes of every file under some paths, to compare after a run.
struct Unchanged {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    roots: Vec<PathBuf>,
}

impl Unchanged {
    fn record(paths: &[&Path]) -> Unchanged {
        let roots: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        Unchanged { files: Unchanged::walk(&roots), roots }
    }

    /// Every path under `roots` with its bytes (`None` for a folder or a special file).
    fn walk(roots: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = roots.to_vec();
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
            if meta.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    stack.push(e.unwrap().path());
                }
                out.push((p, None));
            } else if meta.is_file() {
                out.push((p.clone(), Some(std::fs::read(&p).unwrap())));
            } else {
                out.push((p, None));
            }
        }
        out.sort();
        out
    }

    fn assert_same(&self) {
        let now = Unchanged::walk(&self.roots);
        let names = |v: &[(PathBuf, Option<Vec<u8>>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&now), names(&self.files), "files appeared or vanished among the inputs");
        for ((path, was), (_, is)) in self.files.iter().zip(&now) {
            assert!(was == is, "{} changed", path.display());
        }
    }
}

/// Asserts `stderr` contains every one of `needles`.
fn mentions(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(stderr.contains(needle), "stderr does not mention {needle:?}:\n{stderr}");
    }
}

/// An output location in an empty directory of its own, so leftovers are easy to spot.
struct OutDir {
    dir: tempfile::TempDir,
}

impl OutDir {
    fn new() -> OutDir {
        OutDir { dir: tempfile::tempdir().unwrap() }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing at all was written: no output, no `.partial`.
    fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "files left behind after a failure: {left:?}");
    }
}

/// `smelt logits` that must fail; checks that `--out` was not written. Returns stderr.
fn logits_fails(model: &Path, prompt_ids: &str, extra: &[&str]) -> String {
    let out = OutDir::new();
    let file = out.file("logits.safetensors");
    let mut args = vec!["logits", "--model", path_str(model), "--prompt-ids", prompt_ids, "--out", path_str(&file)];
    args.extend_from_slice(extra);
    let stderr = fails(&args);
    assert!(!file.exists(), "{} exists after a failed run", file.display());
    out.assert_empty();
    stderr
}

/// `smelt generate` that must fail; checks that `--ids-out` was not written. Returns stderr.
fn generate_fails(model: &Path, prompt_ids: &str, extra: &[&str]) -> String {
    let out = OutDir::new();
    let file = out.file("ids.json");
    let mut args = vec![
        "generate",
        "--model",
        path_str(model),
        "--prompt-ids",
        prompt_ids,
        "--max-new-tokens",
        "4",
        "--ids-out",
        path_str(&file),
    ];
    args.extend_from_slice(extra);
    let stderr = fails(&args);
    assert!(!file.exists(), "{} exists after a failed run", file.display());
    out.assert_empty();
    stderr
}

/// A copy of a fixture's model files (not the reference outputs) that a test may damage.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap();
        if file_name != "reference.safetensors" {
            std::fs::copy(&path, tmp.path().join(file_name)).unwrap();
        }
    }
    tmp
}

/// One tensor of a safetensors file, owned.
struct Stored {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// Rewrites a safetensors file through `edit`, which may change, drop or add tensors.
fn rewrite_tensors(path: &Path, edit: impl FnOnce(&mut Vec<Stored>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<Stored> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| Stored { name, dtype: t.dtype(), shape: t.shape().to_vec(), data: t.data().to_vec() })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn find<'a>(tensors: &'a mut [Stored], name: &str) -> &'a mut Stored {
    tensors.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

/// Edits a copied fixture's config.json as JSON.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The one-token fixture (vocab 384, max_position_embeddings 128) takes single-id prompts.
const ONE: &str = "one-token";
const PROMPT: &str = "5,17";
const SHARDED: &str = "gqa2-untied-bf16-sharded";
