//! Run statistics for `generate` and each `chat` turn, as llama.cpp prints them: the prompt's
//! and the generation's token rates apart, the time to the first token, and why it stopped.

use std::time::{Duration, Instant};

/// Times one generation: start it before the prompt runs, mark the prompt's end and each token.
pub struct RunClock {
    start: Instant,
    prompt_done: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    tokens: usize,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock { start: Instant::now(), prompt_done: None, first_token: None, last_token: None, tokens: 0 }
    }

    /// The prompt has run (its logits give the first token).
    pub fn prompt_done(&mut self) {
        self.prompt_done = Some(Instant::now());
    }

    /// A generated token has been shown.
    pub fn token(&mut self) {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.tokens += 1;
    }

    /// One line: `prompt: 5 tokens in 12.3 ms (406.5 tokens/s) | generation: 16 tokens in
    /// 0.11 s (140.2 tokens/s) | first token after 13.0 ms | finish: length` (`finish`: a
    /// [`smelt::FinishReason`]'s name, or why else it stopped). The generation's
    /// rate counts the tokens after the first over the time after it (the first comes from the
    /// prompt's logits).
    pub fn summary(&self, prompt_tokens: usize, finish: &str) -> String {
        let prompt_time = self.prompt_done.map_or(Duration::ZERO, |t| t - self.start);
        let mut line = format!("prompt: {} in {}", count(prompt_tokens), duration(prompt_time));
        line += &rate(prompt_tokens, prompt_time);
        let decode_time = match (self.first_token, self.last_token) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        line += &format!(" | generation: {} in {}", count(self.tokens), duration(decode_time));
        line += &rate(self.tokens.saturating_sub(1), decode_time);
        if let Some(first) = self.first_token {
            line += &format!(" | first token after {}", duration(first - self.start));
        }
        line + " | finish: " + finish
    }
}

fn count(tokens: usize) -> String {
    if tokens == 1 {
        "1 token".into()
    } else {
        format!("{tokens} tokens")
    }
}

fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// ` (N tokens/s)`, or nothing when there is no time to divide by.
fn rate(tokens: usize, d: Duration) -> String {
    let s = d.as_secs_f64();
    if tokens == 0 || s <= 0.0 {
        String::new()
    } else {
        format!(" ({:.1} tokens/s)", tokens as f64 / s)
    }
}

#[cfg(test)]
mod tests {
    use smelt::FinishReason;

    use super::*;

    #[test]
    fn the_summary_separates_prompt_and_generation() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let clock = RunClock {
            start,
            prompt_done: Some(at(100)),
            first_token: Some(at(110)),
            last_token: Some(at(2110)),
            tokens: 21,
        };
        assert_eq!(
            clock.summary(50, FinishReason::ContextFull.as_str()),
            "prompt: 50 tokens in 100.0 ms (500.0 tokens/s) | generation: 21 tokens in 2.00 s (10.0 tokens/s) \
             | first token after 110.0 ms | finish: context_full"
        );
        // Nothing generated: no rate, no first token.
        let idle = RunClock { start, prompt_done: Some(at(5)), first_token: None, last_token: None, tokens: 0 };
        assert_eq!(
            idle.summary(1, "length"),
            "prompt: 1 token in 5.0 ms (200.0 tokens/s) | generation: 0 tokens in 0.0 ms | finish: length"
        );
    }
}
