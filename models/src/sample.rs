//! Choosing the next token from logits: greedy, or a seeded draw after the usual transforms in
//! Hugging Face's order: repetition penalty, presence penalty, temperature, top-k, top-p,
//! min-p. Same parameters and seed, same tokens.

use std::collections::HashMap;

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
    rng: SplitMix64,
    /// Tokens of the prompt and the output (for the repetition penalty).
    seen: HashMap<u32, ()>,
    /// Tokens generated so far (for the presence penalty).
    generated: HashMap<u32, ()>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let rng = SplitMix64::new(params.seed);
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
        let mut r = self.rng.next_f64();
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

/// SplitMix64: a tiny, well-known, seedable generator; enough for reproducible sampling.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, seed: 7, ..SamplingParams::default() }
    }

    /// The reference SplitMix64 (Steele, Lea and Flood; Vigna's `splitmix64.c`): seed 0 and
    /// the much-quoted seed 1234567 give these first outputs.
    #[test]
    fn splitmix64_is_the_reference_generator() {
        let first = |seed: u64| {
            let mut g = SplitMix64::new(seed);
            [g.next_u64(), g.next_u64(), g.next_u64()]
        };
        assert_eq!(first(0), [0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4, 0x06c4_5d18_8009_454f]);
        assert_eq!(first(1_234_567), [6_457_827_717_110_365_317, 3_203_168_211_198_807_973, 9_817_491_932_198_370_423]);
        // The top 53 bits, over 2^53: in [0, 1).
        assert_eq!(SplitMix64::new(0).next_f64(), (0xe220_a839_7b1d_cdafu64 >> 11) as f64 / (1u64 << 53) as f64);
    }

    /// HF leaves top-p out at 1.0: a token whose probability is below f64's resolution next to
    /// 1 (e^-40 here) stays in the distribution, although the cumulative sum reaches 1 first.
    #[test]
    fn top_p_of_one_keeps_every_token() {
        let dist = Sampler::new(params(1.0), &[]).distribution(&[0.0, -40.0]);
        assert_eq!(dist.len(), 2, "{dist:?}");
        assert!(dist[1].1 > 0.0 && dist[1].1 < 1e-17, "{dist:?}");
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn extreme_penalties_and_temperatures_saturate_instead_of_overflowing() {
        // A repetition penalty of 1e-40 lifts a seen positive logit past f32::MAX: it must
        // then be the surest token, not one dropped as non-finite.
        let p = SamplingParams { temperature: 1.0, repetition_penalty: 1e-40, ..params(1.0) };
        let mut s = Sampler::new(p, &[3]);
        assert!((0..50).all(|_| s.sample(&LOGITS) == 3));
        // A presence penalty of 1e38 on a token makes it the least likely, never NaN.
        let p = SamplingParams { temperature: 1.0, presence_penalty: 3e38, ..params(1.0) };
        let mut s = Sampler::new(p, &[]);
        s.observe(0);
        assert!((0..200).all(|_| s.sample(&LOGITS) != 0));
        // A temperature of 1e-45 is greedy, computed without overflow.
        let mut s = Sampler::new(params(1e-45), &[]);
        assert!((0..50).all(|_| s.sample(&LOGITS) == 0));
    }

    /// Draws `n` tokens and returns each token's frequency.
    fn frequencies(p: &SamplingParams, logits: &[f32], n: usize) -> Vec<f64> {
        let mut s = Sampler::new(p.clone(), &[]);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    /// The filtered softmax, computed here from its definition for the test's logits.
    fn expected(logits: &[f32], t: f64, keep: &[usize]) -> Vec<f64> {
        let w: Vec<f64> =
            (0..logits.len()).map(|i| if keep.contains(&i) { (logits[i] as f64 / t).exp() } else { 0.0 }).collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    /// Every frequency within 4.5 standard errors of its probability (a false alarm about once
    /// in 150,000 per token), and nothing drawn outside the kept set.
    fn assert_matches(freq: &[f64], want: &[f64], n: usize) {
        for (i, (&f, &p)) in freq.iter().zip(want).enumerate() {
            let se = (p * (1.0 - p) / n as f64).sqrt().max(1e-12);
            assert!((f - p).abs() <= 4.5 * se + 1e-12, "token {i}: frequency {f:.4}, probability {p:.4}");
        }
    }

    const LOGITS: [f32; 6] = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0];

    #[test]
    fn seeded_draws_repeat_and_follow_the_filtered_softmax() {
        let n = 40_000;
        let cases: Vec<(SamplingParams, Vec<usize>)> = vec![
            (params(1.0), (0..6).collect()),
            (params(0.5), (0..6).collect()),
            (SamplingParams { top_k: 3, ..params(1.0) }, vec![0, 1, 2]),
            // Softmax at T = 1: 0.429, 0.260, 0.158, 0.096, ...: 0.7 is reached at the 3rd.
            (SamplingParams { top_p: 0.7, ..params(1.0) }, vec![0, 1, 2]),
            // min-p 0.3 keeps p >= 0.129: tokens 0, 1, 2.
            (SamplingParams { min_p: 0.3, ..params(1.0) }, vec![0, 1, 2]),
            (SamplingParams { top_k: 4, top_p: 0.9, min_p: 0.25, ..params(1.0) }, vec![0, 1, 2]),
        ];
        for (p, keep) in cases {
            let freq = frequencies(&p, &LOGITS, n);
            assert_eq!(freq, frequencies(&p, &LOGITS, n), "same seed, same draws: {p:?}");
            let want = expected(&LOGITS, p.temperature as f64, &keep);
            assert_matches(&freq, &want, n);
            let dist = Sampler::new(p.clone(), &[]).distribution(&LOGITS);
            assert_eq!(dist.iter().map(|&(t, _)| t as usize).collect::<Vec<_>>(), keep, "{p:?}");
        }
        let other = SamplingParams { seed: 8, ..params(1.0) };
        assert_ne!(frequencies(&params(1.0), &LOGITS, 1000), frequencies(&other, &LOGITS, 1000));
    }

    /// Hugging Face's sampling, written here from `transformers`' logits processors as
    /// `generate` orders them, independently of `Sampler`: repetition penalty, (vLLM's)
    /// presence penalty, then the warpers temperature, top-k, top-p, min-p, each masking to
    /// -inf, then softmax. Top-p sorts ascending and drops tokens whose cumulative
    /// probability is at most 1 - top_p (keeping the last); min-p drops tokens below min_p
    /// times the top probability of what is left. (The test logits have no ties, where HF's
    /// top-k would keep every token equal to the k-th.)
    fn hf_distribution(logits: &[f32], p: &SamplingParams, seen: &[u32], generated: &[u32]) -> Vec<f64> {
        let mut s: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        for &t in seen {
            let x = &mut s[t as usize];
            let rp = p.repetition_penalty as f64;
            *x = if *x < 0.0 { *x * rp } else { *x / rp };
        }
        for &t in generated {
            s[t as usize] -= p.presence_penalty as f64;
        }
        for x in &mut s {
            *x /= p.temperature as f64;
        }
        if p.top_k > 0 && p.top_k < s.len() {
            let mut sorted = s.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[p.top_k - 1];
            s.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f64::NEG_INFINITY);
        }
        let softmax = |s: &[f64]| {
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let total: f64 = e.iter().sum();
            e.into_iter().map(|x| x / total).collect::<Vec<f64>>()
        };
        if p.top_p < 1.0 {
            let probs = softmax(&s);
            let mut ascending: Vec<usize> = (0..s.len()).collect();
            ascending.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
            let mut cumulative = 0.0;
            let last = ascending.len() - 1;
            for (rank, &i) in ascending.iter().enumerate() {
                cumulative += probs[i];
                if cumulative <= 1.0 - p.top_p as f64 && rank != last {
                    s[i] = f64::NEG_INFINITY;
                }
            }
        }
        if p.min_p > 0.0 {
            let probs = softmax(&s);
            let top = probs.iter().cloned().fold(0.0, f64::max);
            for (x, &q) in s.iter_mut().zip(&probs) {
                if q < p.min_p as f64 * top {
                    *x = f64::NEG_INFINITY;
                }
            }
        }
        softmax(&s)
    }

    /// Every processor at temperatures other than 1, where their order matters (top-p before
    /// the temperature would keep another set), against `hf_distribution`.
    #[test]
    fn draws_follow_hugging_faces_processor_order_at_every_temperature() {
        let n = 40_000;
        // Distinct logits, so no top-k tie; the penalties reorder them.
        let logits: [f32; 8] = [2.0, 1.5, 1.1, 0.6, 0.1, -0.4, -1.0, 2.4];
        let (seen, generated) = ([7u32, 3], [7u32]);
        for temperature in [0.5, 0.8, 1.7] {
            for (top_k, top_p, min_p, rp, pp) in [
                (0, 0.8, 0.0, 1.0, 0.0),
                (4, 1.0, 0.0, 1.0, 0.0),
                (0, 1.0, 0.2, 1.0, 0.0),
                (5, 0.9, 0.1, 1.3, 0.0),
                (0, 0.75, 0.0, 1.0, 0.7),
                (6, 0.95, 0.05, 1.5, 0.4),
            ] {
                let p = SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    min_p,
                    repetition_penalty: rp,
                    presence_penalty: pp,
                    seed: 11,
                };
                let mut sampler = Sampler::new(p.clone(), &seen[1..]);
                for &t in &generated {
                    sampler.observe(t);
                }
                let want = hf_distribution(&logits, &p, &seen, &generated);
                let mut counts = vec![0usize; logits.len()];
                for _ in 0..n {
                    counts[sampler.sample(&logits) as usize] += 1;
                }
                let freq: Vec<f64> = counts.iter().map(|&c| c as f64 / n as f64).collect();
                assert_matches(&freq, &want, n);
                let kept: Vec<usize> = (0..logits.len()).filter(|&i| want[i] > 0.0).collect();
                let mut got: Vec<usize> = sampler.distribution(&logits).iter().map(|&(t, _)| t as usize).collect();
                got.sort();
                assert_eq!(got, kept, "{p:?}");
            }
        }
    }

    #[test]
    fn penalties_change_what_greedy_picks() {
        // Token 0 leads; the repetition penalty (it is in the prompt) halves its logit.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0) }, &[0]);
        assert_eq!(s.sample(&LOGITS), 1);
        // Negative logits are multiplied: -1 becomes -2.
        assert_eq!(s.penalized(&[-1.0, -1.5])[0], -2.0);
        let mut r = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..params(0.0) }, &[1]);
        assert_eq!(r.penalized(&[-1.0, -1.5])[1], -3.0);
        assert_eq!(r.sample(&LOGITS), 0);
        // Presence: only generated tokens, once each.
        let mut p = Sampler::new(SamplingParams { presence_penalty: 1.0, ..params(0.0) }, &[0]);
        assert_eq!(p.sample(&LOGITS), 0);
        p.observe(0);
        p.observe(0);
        assert_eq!(p.penalized(&LOGITS)[0], 1.0);
        assert_eq!(p.sample(&LOGITS), 1);
        assert!(!s.params().is_plain_greedy() && params(0.0).is_plain_greedy());
    }

    #[test]
    fn out_of_range_parameters_are_named() {
        for (p, name) in [
            (SamplingParams { temperature: -1.0, ..params(0.0) }, "temperature"),
            (SamplingParams { top_p: 0.0, ..params(0.0) }, "top_p"),
            (SamplingParams { min_p: 1.5, ..params(0.0) }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..params(0.0) }, "repetition_penalty"),
            (SamplingParams { presence_penalty: f32::NAN, ..params(0.0) }, "presence_penalty"),
        ] {
            assert!(p.validate().unwrap_err().starts_with(name), "{p:?}");
        }
        assert!(params(0.7).validate().is_ok());
    }
}
