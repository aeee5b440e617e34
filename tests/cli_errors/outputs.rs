//! Nothing the user owns is lost: an output path that is a file the command reads is refused
//! (by any spelling: `..`, a symlink, a hard link) before any work, naming both paths; a dump
//! replaces only an empty folder or an earlier smelt dump, and a failed one leaves nothing.

use super::*;

/// `smelt logits --out <path>` over a copy of the one-token model must fail naming `--out`
/// and `reads`, with every file of the model unchanged.
fn logits_out_refused(model: &Path, out: &Path) {
    let args = ["logits", "--model", path_str(model), "--prompt-ids", PROMPT, "--out", path_str(out)];
    let stderr = fails_keeping(&[model], &args);
    mentions(&stderr, &["--out", path_str(out), "which this command reads", "refusing"]);
}

#[test]
fn logits_out_onto_any_file_of_the_model_is_refused_by_any_name() {
    let model = copy_fixture(ONE);
    let dir = model.path();
    for name in ["model.safetensors", "config.json", "generation_config.json"] {
        logits_out_refused(dir, &dir.join(name));
    }
    // Spelled through `..`, through a symlink, as a hard link.
    let dotted = dir.join("..").join(dir.file_name().unwrap()).join("model.safetensors");
    logits_out_refused(dir, &dotted);
    let links = tempfile::tempdir().unwrap();
    let symlink = links.path().join("link.safetensors");
    std::os::unix::fs::symlink(dir.join("model.safetensors"), &symlink).unwrap();
    logits_out_refused(dir, &symlink);
    let hard = links.path().join("hard.json");
    std::fs::hard_link(dir.join("config.json"), &hard).unwrap();
    logits_out_refused(dir, &hard);
    assert!(std::fs::symlink_metadata(&symlink).unwrap().file_type().is_symlink(), "the symlink was replaced");
}

#[test]
fn ids_out_onto_a_shard_the_tokenizer_or_the_batch_file_is_refused() {
    let model = copy_fixture("gqa2-untied-bf16-sharded");
    let shard = model.path().join("model-00002-of-00003.safetensors");
    let stderr = fails_keeping(
        &[model.path()],
        &["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT, "--ids-out", path_str(&shard)],
    );
    mentions(&stderr, &["--ids-out", "a shard named by", "model.safetensors.index.json"]);

    let files = tempfile::tempdir().unwrap();
    let tokenizer = files.path().join("tokenizer.json");
    std::fs::copy(root().join("models/assets/qwen3/tokenizer.json"), &tokenizer).unwrap();
    let batch = files.path().join("requests.jsonl");
    std::fs::write(&batch, "{\"prompt_ids\": [5, 17]}\n").unwrap();
    let one = fixture_dir(ONE);
    let ids_out = |out: &Path| {
        let args = ["generate", "--model", path_str(&one), "--batch", path_str(&batch), "--tokenizer"];
        let mut args = args.to_vec();
        args.extend([path_str(&tokenizer), "--ids-out", path_str(out)]);
        fails_keeping(&[files.path()], &args)
    };
    mentions(&ids_out(&batch), &["--ids-out", "--batch", "requests.jsonl"]);
    mentions(&ids_out(&tokenizer), &["--ids-out", "--tokenizer", "tokenizer.json"]);
}

/// A file smelt would read from the model folder next time counts as read before it exists:
/// writing it would break the model (a sharded model gains a `model.safetensors` that wins
/// over its index; ids land where the tokenizer is looked for).
#[test]
fn outputs_onto_model_files_that_do_not_exist_yet_are_refused() {
    let sharded = copy_fixture("gqa2-untied-bf16-sharded");
    logits_out_refused(sharded.path(), &sharded.path().join("model.safetensors"));
    let model = copy_fixture(ONE);
    for name in ["tokenizer.json", "generation_config.json", "chat_template.jinja"] {
        let out = model.path().join(name);
        let _ = std::fs::remove_file(&out);
        let args = ["generate", "--model", path_str(model.path()), "--prompt-ids", PROMPT, "--ids-out", path_str(&out)];
        mentions(&fails_keeping(&[model.path()], &args), &["--ids-out", name, "which this command reads"]);
    }
}

#[test]
fn bench_json_onto_the_model_config_is_refused_before_anything_runs() {
    let model = copy_fixture(ONE);
    let config = model.path().join("config.json");
    let stderr =
        fails_keeping(&[model.path()], &["bench", "--model", path_str(model.path()), "--json", path_str(&config)]);
    mentions(&stderr, &["--json", "which this command reads"]);
}

#[test]
fn outputs_in_a_folder_that_cannot_be_written_or_onto_a_device_are_refused() {
    // /proc refuses new files even to root (CI may run as root, so file modes prove nothing).
    let model = fixture_dir(ONE);
    let out = "/proc/smelt-logits.safetensors";
    let stderr = fails(&["logits", "--model", path_str(&model), "--prompt-ids", PROMPT, "--out", out]);
    mentions(&stderr, &["--out", out, "cannot write in folder /proc"]);
    let stderr = fails(&["generate", "--model", path_str(&model), "--prompt-ids", PROMPT, "--ids-out", "/dev/null"]);
    mentions(&stderr, &["--ids-out /dev/null", "not a regular file"]);
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()), "/dev/null was replaced");
}

/// The files of folder `dir`, relative, sorted (`.smelt-dump.json` included).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dump_refuses_a_folder_smelt_did_not_write_and_leaves_it_untouched() {
    // `smelt compile --dump .` from a project folder: its passes/ must survive.
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join("passes")).unwrap();
    std::fs::write(project.path().join("passes/lib.rs"), "// mine").unwrap();
    std::fs::write(project.path().join("Cargo.toml"), "[package]").unwrap();
    let before = Unchanged::record(&[project.path()]);
    let (code, stdout, stderr, _) = run_in(project.path(), None, &["compile", "--dump", "."]);
    failed_cleanly(&["compile", "--dump", "."], code, &stdout, &stderr);
    mentions(&stderr, &["--dump .", "not an earlier smelt dump", ".smelt-dump.json"]);
    before.assert_same();
    // The model directory itself.
    let model = copy_fixture(ONE);
    let dir = path_str(model.path());
    let stderr = fails_keeping(&[model.path()], &["compile", "--model", dir, "--dump", dir]);
    mentions(&stderr, &["--dump", "refusing to replace it"]);
    // An earlier dump holding a file smelt did not write.
    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("dump");
    let (code, _, stderr) = run(&["compile", "--no-fuse", "--dump", path_str(&dump)]);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::write(dump.join("notes.md"), "mine").unwrap();
    let stderr = fails_keeping(&[out.path()], &["compile", "--no-fuse", "--dump", path_str(&dump)]);
    mentions(&stderr, &["notes.md", "smelt did not write"]);
}

#[test]
fn a_new_dump_replaces_an_earlier_one_whole() {
    let out = tempfile::tempdir().unwrap();
    let dump = out.path().join("dump");
    let (code, _, stderr) = run(&["compile", "--dump", path_str(&dump)]);
    assert_eq!(code, Some(0), "{stderr}");
    let full = listing(&dump);
    assert!(full.iter().any(|f| f.starts_with("passes/")) && full.iter().any(|f| f.starts_with("kernels/")));
    // A smaller dump over it: nothing of the first stays behind, and nothing lands beside it.
    let (code, _, stderr) = run(&["compile", "--no-fuse", "--dump", path_str(&dump)]);
    assert_eq!(code, Some(0), "{stderr}");
    let small = listing(&dump);
    assert!(!small.iter().any(|f| f.starts_with("passes/") || f.starts_with("kernels")), "{small:?}");
    assert!(small.contains(&".smelt-dump.json".to_string()) && small.contains(&"plan.json".to_string()));
    assert_eq!(listing(out.path()).iter().filter(|f| !f.starts_with("dump/")).count(), 0, "leftovers beside it");
}

#[test]
fn a_failed_dump_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    // Fails late, after the graphs are compiled: the KV budget holds no block.
    let dump = out.path().join("a/b/dump");
    let args = ["compile", "--dump", path_str(&dump), "--kv-block-tokens", "4096", "--kv-budget-gib", "0.001"];
    let stderr = fails(&args);
    mentions(&stderr, &["KV"]);
    assert!(listing(out.path()).is_empty() && std::fs::read_dir(out.path()).unwrap().next().is_none());
    // Fails early: a config that does not parse.
    let config = out.path().join("config.json");
    std::fs::write(&config, "{").unwrap();
    let stderr = fails(&["compile", "--config", path_str(&config), "--dump", path_str(&dump)]);
    mentions(&stderr, &[path_str(&config)]);
    assert_eq!(listing(out.path()), ["config.json"]);
    // A folder whose `passes` is a file of the user's: refused before a single file is written
    // (writing the graphs first and failing at `passes/` would leave half a dump in it).
    let target = out.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("passes"), "mine").unwrap();
    let stderr = fails_keeping(&[&target], &["compile", "--dump", path_str(&target)]);
    mentions(&stderr, &["--dump"]);
}
