//! `smelt generate --batch FILE.jsonl`: many requests through the batch engine (continuous
//! batching over a paged KV cache with prefix caching), one JSON line out per request.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use smelt::models::batch::{BatchEvent, BatchOptions, BatchStats, Request};
use smelt::models::{ChatMessage, ModelError, SamplingParams, Tokenizer};

use super::outputs::write_atomically;

/// The largest `--batch` file read (it is held in memory whole, with its requests).
const MAX_BATCH_FILE_BYTES: u64 = 1 << 30;

/// How `--batch` runs. Each flag is an error without `--batch`; unset, it takes the batch
/// engine's default (`BatchOptions::default`).
#[derive(clap::Args, Clone, Debug)]
pub struct BatchArgs {
    /// With --batch: reuse the KV of full blocks of tokens that earlier requests computed
    /// [default: on].
    #[arg(long, value_enum)]
    prefix_cache: Option<OnOff>,
    /// With --batch: the KV cache's size, shared by all sequences (e.g. 48KiB, 512MiB, 2GiB);
    /// at most the host's memory (the GPU's with --device cuda) [default: 1GiB].
    #[arg(long, value_parser = parse_size)]
    kv_memory: Option<usize>,
    /// With --batch: tokens per KV block (the unit of allocation and of prefix reuse) [default: 16].
    #[arg(long, value_parser = super::at_least_one())]
    kv_block_tokens: Option<usize>,
    /// With --batch: sequences running at once, at most 4096 [default: 64].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=super::MAX_BATCH))]
    max_batch: Option<usize>,
    /// With --batch: tokens computed per step across all sequences [default: 2048].
    #[arg(long, value_parser = super::at_least_one())]
    max_step_tokens: Option<usize>,
}

impl BatchArgs {
    /// The batch-only flags given (each is an error without `--batch`).
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--prefix-cache", self.prefix_cache.is_some()),
            ("--kv-memory", self.kv_memory.is_some()),
            ("--kv-block-tokens", self.kv_block_tokens.is_some()),
            ("--max-batch", self.max_batch.is_some()),
            ("--max-step-tokens", self.max_step_tokens.is_some()),
        ];
        flags.into_iter().filter(|(_, set)| *set).map(|(flag, _)| flag).collect()
    }

    /// `--kv-block-tokens`, when given.
    pub fn kv_block_tokens(&self) -> Option<usize> {
        self.kv_block_tokens
    }

    /// The batch engine's options: the flags given, its defaults for the others.
    pub fn options(&self) -> BatchOptions {
        let d = BatchOptions::default();
        BatchOptions {
            kv_budget_bytes: self.kv_memory.unwrap_or(d.kv_budget_bytes),
            block_tokens: self.kv_block_tokens.unwrap_or(d.block_tokens),
            max_batch: self.max_batch.unwrap_or(d.max_batch),
            max_step_tokens: self.max_step_tokens.unwrap_or(d.max_step_tokens),
            prefix_cache: self.prefix_cache.map_or(d.prefix_cache, |p| p == OnOff::On),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// What every request starts from before its line overrides it.
pub struct Defaults<'a> {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: &'a [String],
    /// Render `prompt` as a user turn with the chat template (`--chat`).
    pub chat: bool,
    /// `enable_thinking` for the chat template (`--no-think`).
    pub enable_thinking: Option<bool>,
}

/// One line of the batch file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    /// The caller's name for the request (any JSON value), echoed in its output line.
    id: Option<serde_json::Value>,
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    messages: Option<Vec<ChatMessage>>,
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stops>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Stops {
    One(String),
    Many(Vec<String>),
}

/// A batch file's requests and where each came from.
pub struct BatchFile<'p> {
    path: &'p Path,
    requests: Vec<Request>,
    /// 1-based line of each request.
    lines: Vec<usize>,
    /// Each request's `"id"`, where its line has one.
    ids: Vec<Option<serde_json::Value>>,
}

/// Reads `path` into requests (blank lines skipped); errors name the file and line.
pub fn read_requests<'p>(
    path: &'p Path,
    defaults: &Defaults<'_>,
    tokenizer: Option<&Tokenizer>,
) -> Result<BatchFile<'p>> {
    let text = smelt::runtime::files::read_text(path, MAX_BATCH_FILE_BYTES)
        .with_context(|| format!("reading --batch {}", path.display()))?;
    let (mut requests, mut lines, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let mut parsed: Line = serde_json::from_str(line).with_context(at)?;
        ids.push(parsed.id.take());
        requests.push(request(parsed, defaults, tokenizer).with_context(at)?);
        lines.push(n + 1);
    }
    if requests.is_empty() {
        bail!("--batch {}: no requests (expected one JSON object per line)", path.display());
    }
    Ok(BatchFile { path, requests, lines, ids })
}

fn template(t: &Tokenizer) -> Result<&smelt::models::ChatTemplate> {
    t.chat_template().context("the model has no chat template for \"messages\" or --chat")
}

fn request(line: Line, d: &Defaults<'_>, tokenizer: Option<&Tokenizer>) -> Result<Request> {
    let tokenizer_for = |what: &str| {
        tokenizer.with_context(|| {
            format!("\"{what}\" needs a tokenizer (the model has no tokenizer.json; pass --tokenizer)")
        })
    };
    let prompt = match (line.prompt, line.prompt_ids, line.messages) {
        (None, Some(ids), None) => ids,
        (Some(text), None, None) => {
            let t = tokenizer_for("prompt")?;
            let text = if d.chat {
                template(t)?.render(&[ChatMessage::new("user", text)], true, d.enable_thinking)?
            } else {
                text
            };
            t.encode(&text)?
        }
        (None, None, Some(messages)) => {
            let t = tokenizer_for("messages")?;
            t.encode(&template(t)?.render(&messages, true, d.enable_thinking)?)?
        }
        _ => bail!("give exactly one of \"prompt\", \"prompt_ids\" or \"messages\""),
    };
    let s = &d.sampling;
    let sampling = SamplingParams {
        temperature: line.temperature.unwrap_or(s.temperature),
        top_k: line.top_k.unwrap_or(s.top_k),
        top_p: line.top_p.unwrap_or(s.top_p),
        min_p: line.min_p.unwrap_or(s.min_p),
        repetition_penalty: line.repetition_penalty.unwrap_or(s.repetition_penalty),
        presence_penalty: line.presence_penalty.unwrap_or(s.presence_penalty),
        seed: line.seed.unwrap_or(s.seed),
    };
    sampling.validate().map_err(anyhow::Error::msg)?;
    // As on the command line: a sampling field this line sets would change nothing greedily.
    let sampling_only = [
        ("top_k", line.top_k.is_some()),
        ("top_p", line.top_p.is_some()),
        ("min_p", line.min_p.is_some()),
        ("seed", line.seed.is_some()),
    ];
    if let Some((field, _)) = sampling_only.iter().find(|(_, set)| *set).filter(|_| sampling.temperature == 0.0) {
        bail!("\"{field}\" applies to sampling, and the temperature is 0 (greedy): set \"temperature\" above 0");
    }
    let stop = match line.stop {
        None => d.stop.to_vec(),
        Some(Stops::One(s)) => vec![s],
        Some(Stops::Many(v)) => v,
    };
    Ok(Request { prompt, max_new_tokens: line.max_new_tokens.unwrap_or(d.max_new_tokens), sampling, stop })
}

/// Runs the batch, printing each request as a JSON line when it finishes and a summary (with
/// the prefix-cache hit rate) on stderr.
pub fn run(model: &mut smelt::Model, file: &BatchFile<'_>, args: &BatchArgs, ids_out: Option<&Path>) -> Result<()> {
    let options = args.options();
    let requests = &file.requests;
    let shows_text = model.tokenizer().is_some();
    let mut stdout = std::io::stdout().lock();
    let (mut finished, mut generated) = (0, 0);
    let mut last_report = Instant::now();
    let result = model.run_batch(requests, |event| match event {
        BatchEvent::Token { .. } => generated += 1,
        BatchEvent::Finished { request, completion, .. } => {
            finished += 1;
            // Token counts as OpenAI's `usage` names them.
            let mut line = serde_json::json!({
                "index": request,
                "finish_reason": completion.finish,
                "prompt_tokens": requests[request].prompt.len(),
                "completion_tokens": completion.ids.len(),
                "ids": completion.ids,
            });
            if let Some(id) = &file.ids[request] {
                line["id"] = id.clone();
            }
            if shows_text {
                line["text"] = completion.text.clone().into();
            }
            if let Some(w) = &completion.warning {
                line["warning"] = w.clone().into();
            }
            let _ = writeln!(stdout, "{line}");
            if last_report.elapsed() > Duration::from_secs(2) {
                tracing::info!("{finished}/{} requests done, {generated} tokens generated", requests.len());
                last_report = Instant::now();
            }
        }
    });
    let (completions, stats) = match result {
        Ok(done) => done,
        Err(smelt::Error::Model(ModelError::Request { index, source })) => {
            bail!("{}:{}: {source}", file.path.display(), file.lines[index])
        }
        Err(e @ smelt::Error::Model(ModelError::KvPlan(_))) => {
            let flags = format!(
                "--kv-memory {}, --kv-block-tokens {}",
                super::size(options.kv_budget_bytes as u64),
                options.block_tokens
            );
            return Err(anyhow::Error::new(e).context(flags));
        }
        Err(e) => return Err(e.into()),
    };
    let _ = stdout.flush();
    tracing::info!("{}", summary(requests.len(), &stats));
    if let Some(path) = ids_out {
        let ids: Vec<&Vec<u32>> = completions.iter().map(|c| &c.ids).collect();
        write_atomically(path, serde_json::to_string(&ids)?.as_bytes())?;
    }
    Ok(())
}

fn summary(requests: usize, stats: &BatchStats) -> String {
    let s = &stats.scheduler;
    let secs = stats.seconds.max(1e-9);
    format!(
        "batch of {requests} requests: {} prompt tokens; prefix cache: {} of {} looked-up tokens reused (hit rate {:.1}%); \
         {} tokens generated in {:.2}s ({:.1} tokens/s; {:.1} tokens computed/s); {} steps, {} preemptions; \
         KV cache {}: {} blocks of {} tokens",
        stats.prompt_tokens,
        s.hit_tokens,
        s.queried_tokens,
        100.0 * stats.prefix_hit_rate(),
        stats.generated_tokens,
        stats.seconds,
        stats.generated_tokens as f64 / secs,
        s.computed_tokens as f64 / secs,
        s.steps,
        s.preemptions,
        super::size(stats.kv.budget_bytes as u64),
        stats.kv.blocks,
        stats.kv.block_tokens,
    )
}

/// `48KiB`, `2GiB`, `1.5GB`, `4096`: binary units with `i`, decimal without, bytes bare.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1048576.0,
        "gib" | "g" => 1073741824.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => return Err(format!("unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB or GB)")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a size like 48KiB or 2GiB"))?;
    let bytes = value * scale;
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as usize)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
