//! `/metrics` in Prometheus' text format: requests by endpoint and status, prompt and
//! generated tokens, running and waiting sequences, KV blocks, the prefix-cache hit rate, and
//! time-to-first-token and inter-token latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use smelt::models::batch::SessionUsage;

/// Upper bounds (seconds) of the latency histograms' buckets.
const TTFT_BUCKETS: [f64; 16] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0];
const ITL_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

pub struct Metrics {
    /// (endpoint, status) → responses.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    prompt_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    usage: Mutex<SessionUsage>,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            usage: Mutex::default(),
            ttft: Mutex::new(Histogram::new(&TTFT_BUCKETS)),
            itl: Mutex::new(Histogram::new(&ITL_BUCKETS)),
        }
    }
}

/// A lock whose holder panicked still holds valid counters.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    pub fn request(&self, endpoint: &'static str, status: u16) {
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
    }

    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn generated_tokens(&self, n: usize) {
        self.generated_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn time_to_first_token(&self, d: Duration) {
        lock(&self.ttft).observe(d.as_secs_f64());
    }

    pub fn inter_token_latency(&self, d: Duration) {
        lock(&self.itl).observe(d.as_secs_f64());
    }

    /// The engine's state after a step.
    pub fn publish(&self, usage: &SessionUsage) {
        *lock(&self.usage) = *usage;
    }

    pub fn usage(&self) -> SessionUsage {
        *lock(&self.usage)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let usage = self.usage();
        let s = usage.scheduler;
        let hit_rate = s.hit_tokens as f64 / s.queried_tokens.max(1) as f64;
        let counters = [
            (
                "smelt_prompt_tokens_total",
                "Prompt tokens of accepted requests.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            ("smelt_generation_tokens_total", "Tokens generated.", self.generated_tokens.load(Ordering::Relaxed)),
            (
                "smelt_prefix_cache_queried_tokens_total",
                "Prompt tokens looked up in the prefix cache.",
                s.queried_tokens as u64,
            ),
            ("smelt_prefix_cache_hit_tokens_total", "Prompt tokens found in the prefix cache.", s.hit_tokens as u64),
            (
                "smelt_preemptions_total",
                "Sequences preempted (recomputed later) for want of KV blocks.",
                s.preemptions as u64,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value.to_string());
        }
        let gauges = [
            ("smelt_running_sequences", "Sequences in the running batch.", usage.running),
            ("smelt_waiting_sequences", "Sequences waiting for a place in the batch.", usage.waiting),
            ("smelt_kv_blocks_used", "KV cache blocks held by sequences.", usage.blocks_used),
            ("smelt_kv_blocks_free", "KV cache blocks held by no sequence.", usage.blocks_total - usage.blocks_used),
            ("smelt_kv_blocks_cached", "KV cache blocks kept for the prefix cache.", usage.blocks_cached),
        ];
        for (name, help, value) in gauges {
            metric(name, "gauge", help, value.to_string());
        }
        metric(
            "smelt_prefix_cache_hit_rate",
            "gauge",
            "Prompt tokens found in the prefix cache over those looked up.",
            format!("{hit_rate}"),
        );
        let _ = writeln!(
            out,
            "# HELP smelt_requests_total HTTP responses by endpoint and status.\n# TYPE smelt_requests_total counter"
        );
        for ((endpoint, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "smelt_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        lock(&self.ttft).render(
            &mut out,
            "smelt_time_to_first_token_seconds",
            "From a request's arrival to its first token.",
        );
        lock(&self.itl).render(
            &mut out,
            "smelt_inter_token_latency_seconds",
            "Between consecutive tokens of a sequence.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_metrics_render_as_prometheus_text() {
        let m = Metrics::default();
        m.time_to_first_token(Duration::from_millis(3));
        m.time_to_first_token(Duration::from_secs(100));
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        m.publish(&SessionUsage { blocks_total: 10, blocks_used: 3, ..SessionUsage::default() });
        let text = m.render();
        assert!(text.contains("smelt_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("smelt_time_to_first_token_seconds_bucket{le=\"30\"} 1\n"), "{text}");
        assert!(text.contains("smelt_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("smelt_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2\n"));
        assert!(text.contains("smelt_kv_blocks_used 3\n") && text.contains("smelt_kv_blocks_free 7\n"));
    }
}
