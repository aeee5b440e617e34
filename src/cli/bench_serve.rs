//! `smelt bench-serve`: a serving benchmark against a running OpenAI-compatible server (like
//! vLLM's `benchmark_serving`): at each concurrency, that many clients send streaming
//! completions back to back; per level, request throughput, output tokens/s, and the
//! time-to-first-token and inter-token latency percentiles.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{numbers, Numbers};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server's base URL (as `smelt serve` prints it).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Concurrent clients at each level, e.g. 1,8,64.
    #[arg(long, value_parser = numbers, default_value = "1,8,64")]
    concurrency: Numbers,
    /// Requests per level (at least the level's concurrency) [default: 2 x the concurrency].
    #[arg(long)]
    requests: Option<usize>,
    /// Words in each prompt (about a token each); request i's prompt differs from the others.
    #[arg(long, default_value_t = 128)]
    prompt_words: usize,
    /// Tokens each request generates at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// The model name sent in each request [default: the server's first model].
    #[arg(long)]
    model: Option<String>,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One streamed request: when its tokens arrived, from the send.
struct Timed {
    token_times: Vec<f64>,
    tokens: usize,
}

pub fn run(a: Args) -> Result<()> {
    // A status other than 2xx is an answer to report, not a transport error.
    let config =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3600))).http_status_as_error(false);
    let client: ureq::Agent = config.build().into();
    let base = a.url.trim_end_matches('/');
    let model = match &a.model {
        Some(m) => m.clone(),
        None => first_model(&client, base)?,
    };
    let mut levels = Vec::new();
    for &c in &a.concurrency.0 {
        let c = c.max(1) as usize;
        let total = a.requests.unwrap_or(2 * c).max(c);
        let t0 = Instant::now();
        let results = run_level(&client, base, &model, &a, c, total)?;
        let wall = t0.elapsed().as_secs_f64();
        let level = summarize(c, &results, wall);
        println!(
            "concurrency {c:>3}: {total} requests in {wall:.2} s: {:.2} req/s, {:.1} output tokens/s; TTFT p50 {:.1} ms \
             p99 {:.1} ms; ITL p50 {:.1} ms p99 {:.1} ms",
            level["request_throughput"].as_f64().unwrap_or(0.0),
            level["output_tokens_per_s"].as_f64().unwrap_or(0.0),
            level["ttft_ms_p50"].as_f64().unwrap_or(0.0),
            level["ttft_ms_p99"].as_f64().unwrap_or(0.0),
            level["itl_ms_p50"].as_f64().unwrap_or(0.0),
            level["itl_ms_p99"].as_f64().unwrap_or(0.0),
        );
        levels.push(level);
    }
    if let Some(path) = &a.json {
        let report = json!({ "url": base, "model": model, "prompt_words": a.prompt_words,
                             "max_tokens": a.max_tokens, "levels": levels });
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn first_model(client: &ureq::Agent, base: &str) -> Result<String> {
    let url = format!("{base}/v1/models");
    let models: Value =
        client.get(&url).call().and_then(|mut r| r.body_mut().read_json()).with_context(|| format!("GET {url}"))?;
    match models["data"][0]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => bail!("{url} lists no model: {models}"),
    }
}

/// `total` requests over `clients` threads, each sending its next request when the last ends.
fn run_level(
    client: &ureq::Agent,
    base: &str,
    model: &str,
    a: &Args,
    clients: usize,
    total: usize,
) -> Result<Vec<Timed>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Timed>> {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return Ok(done);
                        }
                        done.push(one_request(client, base, model, a, i)?);
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(all)
    })
}

/// Request `i`: a prompt of its own (so the prefix cache shares only what real traffic would).
fn one_request(client: &ureq::Agent, base: &str, model: &str, a: &Args, i: usize) -> Result<Timed> {
    let words: Vec<String> = (0..a.prompt_words).map(|w| format!("w{}", (i * 7919 + w * 104729) % 5000)).collect();
    let body = json!({
        "model": model, "prompt": words.join(" "), "max_tokens": a.max_tokens, "temperature": 0.0,
        "stream": true, "stream_options": { "include_usage": true },
    });
    let url = format!("{base}/v1/completions");
    let sent = Instant::now();
    let mut response = client.post(&url).send_json(&body).with_context(|| format!("POST {url}"))?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("POST {url}: {status}: {}", response.body_mut().read_to_string().unwrap_or_default());
    }
    let (mut token_times, mut tokens) = (Vec::new(), 0);
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.with_context(|| format!("reading the stream of {url}"))?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).with_context(|| format!("a chunk of {url}: {data}"))?;
        if chunk["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
            token_times.push(sent.elapsed().as_secs_f64());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    Ok(Timed { token_times, tokens })
}

/// A level's figures: throughput over the wall time, percentiles over every request (TTFT)
/// and every gap between two streamed chunks (ITL).
fn summarize(concurrency: usize, results: &[Timed], wall: f64) -> Value {
    let mut ttft: Vec<f64> = results.iter().filter_map(|r| r.token_times.first().map(|t| t * 1e3)).collect();
    let mut itl: Vec<f64> =
        results.iter().flat_map(|r| r.token_times.windows(2).map(|w| (w[1] - w[0]) * 1e3)).collect();
    let tokens: usize = results.iter().map(|r| r.tokens).sum();
    json!({
        "concurrency": concurrency,
        "requests": results.len(),
        "output_tokens": tokens,
        "seconds": wall,
        "request_throughput": results.len() as f64 / wall,
        "output_tokens_per_s": tokens as f64 / wall,
        "ttft_ms_p50": percentile(&mut ttft, 50.0),
        "ttft_ms_p99": percentile(&mut ttft, 99.0),
        "itl_ms_p50": percentile(&mut itl, 50.0),
        "itl_ms_p99": percentile(&mut itl, 99.0),
    })
}

/// The nearest-rank percentile (0 for no samples).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(super::percentile(&mut v, 50.0), 50.0);
        assert_eq!(super::percentile(&mut v, 99.0), 99.0);
        assert_eq!(super::percentile(&mut [7.0], 99.0), 7.0);
        assert_eq!(super::percentile(&mut [], 50.0), 0.0);
    }
}
