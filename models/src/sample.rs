//! Choosing the next token from logits: greedy, or a seeded draw after the usual transforms in
//! Hugging Face's order: repetition penalty, presence penalty, temperature, top-k, top-p,
//! min-p. Same parameters and seed, same tokens.

use std::collections::HashMap;

use rand::Rng as _;

/// How the next token is chosen. The default is greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 is greedy (the argmax after the penalties).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// HF's repetition penalty over the prompt and the generated tokens: a seen token's positive
    /// logit is divided by it, a negative one multiplied; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token generated so far (vLLM/OpenAI); 0 is off.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy with no penalty: the next token is the raw argmax, which a backend may compute
    /// without handing logits to the host.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repetition_penalty == 1.0 && self.presence_penalty == 0.0
    }

    /// The first parameter out of range, named as the CLI and the batch file name it.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |name: &str, v: f32, range: &str| Err(format!("{name} must be {range}, got {v}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", self.repetition_penalty, "a finite number > 0");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "finite");
        }
        Ok(())
    }
}

/// A sampler for one sequence: the parameters, its random stream and the tokens seen so far.
pub struct Sampler {
    params: SamplingParams,
    rng: SeededRng,
    /// Tokens of the prompt and the output (for the repetition penalty).
    seen: HashMap<u32, ()>,
    /// Tokens generated so far (for the presence penalty).
    generated: HashMap<u32, ()>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = seeded_rng(params.seed);
        let seen = prompt.iter().map(|&t| (t, ())).collect();
        Sampler { params, rng, seen, generated: HashMap::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a generated token (the penalties see it from the next draw on).
    pub fn observe(&mut self, token: u32) {
        self.seen.insert(token, ());
        self.generated.insert(token, ());
    }

    /// Chooses the next token from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let scores = self.penalized(logits);
        if self.params.temperature <= 0.0 {
            return argmax(&scores);
        }
        let dist = self.filter(&scores);
        let mut r: f64 = self.rng.random();
        for &(token, p) in &dist {
            r -= p;
            if r < 0.0 {
                return token;
            }
        }
        // Rounding left a sliver of probability mass: the last kept token takes it.
        dist.last().map_or_else(|| argmax(&scores), |&(t, _)| t)
    }

    /// The distribution a draw is taken from: (token, probability), most likely first, the
    /// probabilities summing to 1. Empty for greedy.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.params.temperature <= 0.0 {
            return Vec::new();
        }
        self.filter(&self.penalized(logits))
    }

    /// The logits after the penalties. A penalized score saturates at ±f32::MAX instead of
    /// overflowing to ±inf (a repetition penalty of 1e-40 would), so it keeps its rank.
    fn penalized(&self, logits: &[f32]) -> Vec<f32> {
        let mut scores = logits.to_vec();
        let rp = self.params.repetition_penalty;
        let saturate = |s: f32| s.clamp(-f32::MAX, f32::MAX);
        if rp != 1.0 {
            for &t in self.seen.keys() {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = saturate(if *s > 0.0 { *s / rp } else { *s * rp });
                }
            }
        }
        if self.params.presence_penalty != 0.0 {
            for &t in self.generated.keys() {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = saturate(*s - self.params.presence_penalty);
                }
            }
        }
        scores
    }

    /// Temperature, then top-k, top-p and min-p; renormalized.
    fn filter(&self, scores: &[f32]) -> Vec<(u32, f64)> {
        let t = self.params.temperature as f64;
        let mut order: Vec<u32> = (0..scores.len() as u32).filter(|&i| scores[i as usize].is_finite()).collect();
        // Most likely first; ties by token id so the order (and so a draw) is reproducible.
        order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]).then(a.cmp(&b)));
        if self.params.top_k > 0 {
            order.truncate(self.params.top_k);
        }
        let Some(&best) = order.first() else { return Vec::new() };
        let max = scores[best as usize] as f64;
        let weights: Vec<f64> = order.iter().map(|&i| ((scores[i as usize] as f64 - max) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut dist: Vec<(u32, f64)> = order.iter().zip(&weights).map(|(&i, &w)| (i, w / total)).collect();
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let keep = dist
                .iter()
                .position(|&(_, p)| {
                    cumulative += p;
                    cumulative >= self.params.top_p as f64
                })
                .map_or(dist.len(), |i| i + 1);
            dist.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            let floor = self.params.min_p as f64 * dist[0].1;
            dist.retain(|&(_, p)| p >= floor);
        }
        let kept: f64 = dist.iter().map(|&(_, p)| p).sum();
        for d in &mut dist {
            d.1 /= kept;
        }
        dist
    }
}

/// Index of the largest logit (first on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The one random generator smelt uses (sampling, random weights, test data): ChaCha8, seeded
/// from a `u64`. rand_chacha fixes its stream for a seed across versions and platforms, so a
/// seed names the same draws everywhere.
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// The generator for `seed`.
pub fn seeded_rng(seed: u64) -> SeededRng {
    rand::SeedableRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests;
