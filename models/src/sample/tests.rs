use super::*;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams { temperature, seed: 7, ..SamplingParams::default() }
}

/// The stream of a seed is pinned: a change of generator (or of the crate's stream) would
/// change every seeded run, and must be seen here first.
#[test]
fn a_seed_names_a_fixed_stream() {
    const PINNED_0: [u64; 2] = [13_080_132_717_333_068_652, 8_594_738_769_458_413_623];
    let first = |seed: u64| {
        let mut g = seeded_rng(seed);
        [g.random::<u64>(), g.random::<u64>()]
    };
    assert_eq!(first(0), PINNED_0);
    assert_ne!(first(0), first(1));
    // Uniform in [0, 1).
    let mut g = seeded_rng(7);
    assert!((0..10_000).map(|_| g.random::<f64>()).all(|x| (0.0..1.0).contains(&x)));
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
