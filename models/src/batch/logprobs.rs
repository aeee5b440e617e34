//! Log-probabilities of a chosen token and its most likely alternatives, as OpenAI's
//! `logprobs` reports them: from the model's raw logits (before penalties, temperature and
//! truncation, as vLLM reports them by default), so they do not depend on how it sampled.

/// One token's log-probability and the most likely tokens at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    pub logprob: f32,
    /// The most likely tokens, most likely first (ties by id), with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

/// `token`'s log-softmax over `logits` and the `top` most likely tokens. Non-finite logits
/// count as impossible (log-probability -inf).
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprobs {
    let max = logits.iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().filter(|x| x.is_finite()).map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let logprob = |id: u32| match logits.get(id as usize) {
        Some(&x) if x.is_finite() => (x as f64 - log_z) as f32,
        _ => f32::NEG_INFINITY,
    };
    let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&i| logits[i as usize].is_finite()).collect();
    let by_likelihood = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let top = top.min(order.len());
    if top > 0 && top < order.len() {
        order.select_nth_unstable_by(top - 1, by_likelihood);
    }
    order.truncate(top);
    order.sort_by(by_likelihood);
    TokenLogprobs { token, logprob: logprob(token), top: order.into_iter().map(|id| (id, logprob(id))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_the_top_are_ordered() {
        let logits = [1.0f32, 3.0, 2.0, f32::NEG_INFINITY, 3.0];
        let lp = token_logprobs(&logits, 2, 3);
        let z: f64 = [1.0f64, 3.0, 2.0, 3.0].iter().map(|x| x.exp()).sum();
        assert!((lp.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 4, 2], "most likely first, ties by id");
        assert_eq!(token_logprobs(&logits, 3, 0).logprob, f32::NEG_INFINITY);
        assert!(token_logprobs(&logits, 99, 9).top.len() == 4);
        let total: f64 = (0..5).map(|i| (token_logprobs(&logits, i, 0).logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
