//! The batch engine on the CPU backend with the HF fixtures: every request of a batch gets
//! exactly the output it gets alone (`generate`), whatever the batch does around it: prefix
//! caching on or off, a KV budget that forces preemption, small batches and step budgets
//! that chunk the prefill, per-request sampling.

mod common;

use common::fixture_dir;
use smelt::ir::DType;
use smelt::models::batch::{generate_batch, BatchOptions, BatchStats, Completion, FinishReason, Request};
use smelt::models::{generate, Continuation, ModelError, Qwen3Cpu, SamplingParams, Tokenizer};

fn load(fixture: &str, dtype: DType) -> Qwen3Cpu {
    Qwen3Cpu::load(&fixture_dir(fixture), dtype).unwrap()
}

/// A deterministic id stream below `vocab`.
fn ids(seed: u32, n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97 + 13) >> 7) % vocab as u32).collect()
}

/// 12 greedy requests: prompts of 1 to 40 tokens, half of them after a shared 33-token
/// prefix, 3 to 14 new tokens each.
fn mixed_requests(vocab: usize) -> Vec<Request> {
    let shared = ids(1000, 33, vocab);
    (0..12)
        .map(|i| {
            let own = ids(i, 1 + (i as usize * 7) % 40, vocab);
            let prompt = if i % 2 == 0 { [shared.clone(), own].concat() } else { own };
            Request { prompt, max_new_tokens: 3 + (i as usize * 5) % 12, ..Request::default() }
        })
        .collect()
}

fn solo(model: &mut Qwen3Cpu, r: &Request) -> Vec<u32> {
    generate(model, &r.prompt, Continuation::new(r, None), |_, _| {}).unwrap().ids
}

fn batch(model: &mut Qwen3Cpu, requests: &[Request], options: &BatchOptions) -> (Vec<Completion>, BatchStats) {
    generate_batch(model, requests, options, None, |_| {}).unwrap()
}

/// Options whose KV budget holds `blocks` blocks of 4 tokens.
fn budget_of(model: &Qwen3Cpu, blocks: usize) -> BatchOptions {
    let block = model.kv_plan(4, 1 << 30).unwrap().bytes_per_block;
    BatchOptions { kv_budget_bytes: blocks * block, block_tokens: 4, ..BatchOptions::default() }
}

#[test]
fn every_request_gets_its_one_at_a_time_output_however_the_batch_runs() {
    for (fixture, dtype) in [("gqa1-tied-f32", DType::F32), ("gqa2-untied-bf16-sharded", DType::BF16)] {
        let mut model = load(fixture, dtype);
        let requests = mixed_requests(model.config().vocab_size);
        let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut model, r)).collect();
        // The longest request alone: 73 prompt + 14 new tokens = 22 blocks of 4.
        let longest = requests.iter().map(|r| (r.prompt.len() + r.max_new_tokens).div_ceil(4)).max().unwrap();
        let roomy = BatchOptions::default();
        let tight = budget_of(&model, longest + 2);
        let cases = [
            ("cache on", BatchOptions { prefix_cache: true, ..roomy }),
            ("cache off", BatchOptions { prefix_cache: false, ..roomy }),
            ("tight KV, cache on", BatchOptions { prefix_cache: true, ..tight }),
            ("tight KV, cache off", BatchOptions { prefix_cache: false, ..tight }),
            ("3 at a time, 7-token steps", BatchOptions { max_batch: 3, max_step_tokens: 7, ..roomy }),
        ];
        for (what, options) in cases {
            let (out, stats) = batch(&mut model, &requests, &options);
            for (i, (c, want)) in out.iter().zip(&expected).enumerate() {
                assert_eq!(&c.ids, want, "{fixture} {what}: request {i}");
            }
            let s = stats.scheduler;
            if options.prefix_cache {
                // Six prompts share 33 tokens: two full 16-token blocks (eight of 4).
                assert!(s.hit_tokens >= 5 * 32, "{fixture} {what}: {s:?}");
            } else {
                assert_eq!(s.hit_tokens, 0, "{fixture} {what}");
            }
            if what.starts_with("tight") {
                assert!(s.preemptions > 0, "{fixture} {what}: the budget should force preemption: {s:?}");
            }
        }
    }
}

/// B‖A then A‖B, one sequence at a time: A's blocks hold the same tokens in both but after
/// different prefixes, so their KV differs and must not be shared. With the cache on or off,
/// under a roomy or a tight budget, each request gets its solo output.
#[test]
fn equal_blocks_after_different_prefixes_do_not_share_kv() {
    let mut model = load("gqa1-tied-f32", DType::F32);
    let vocab = model.config().vocab_size;
    let (a, b) = (ids(7, 8, vocab), ids(8, 8, vocab));
    let requests: Vec<Request> = [[b.clone(), a.clone()].concat(), [a, b].concat()]
        .into_iter()
        .map(|prompt| Request { prompt, max_new_tokens: 6, ..Request::default() })
        .collect();
    let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut model, r)).collect();
    for prefix_cache in [true, false] {
        for blocks in [64, 6] {
            let options = BatchOptions { prefix_cache, max_batch: 1, ..budget_of(&model, blocks) };
            let (out, stats) = batch(&mut model, &requests, &options);
            for (i, (c, want)) in out.iter().zip(&expected).enumerate() {
                assert_eq!(&c.ids, want, "cache {prefix_cache}, {blocks} blocks: request {i}");
            }
            assert_eq!(stats.scheduler.hit_tokens, 0, "no prefix is shared");
        }
    }
}

#[test]
fn seeded_sampling_per_request_matches_each_request_alone() {
    let mut model = load("gqa1-tied-f32", DType::F32);
    let vocab = model.config().vocab_size;
    let sampling = |i: u64| SamplingParams {
        temperature: 0.7 + 0.1 * i as f32,
        top_k: [0, 5, 40][i as usize % 3],
        top_p: [1.0, 0.9, 0.8][i as usize % 3],
        min_p: [0.0, 0.02][i as usize % 2],
        repetition_penalty: [1.0, 1.2][i as usize % 2],
        presence_penalty: [0.0, 0.3, 0.0][i as usize % 3],
        seed: 100 + i,
    };
    let requests: Vec<Request> = (0..6u32)
        .map(|i| Request {
            prompt: ids(i, 5 + i as usize, vocab),
            max_new_tokens: 12,
            sampling: sampling(i as u64),
            ..Request::default()
        })
        .collect();
    let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut model, r)).collect();
    // A budget tight enough to preempt: a recomputed sequence keeps its random stream.
    let tight = budget_of(&model, 8);
    let (out, stats) = batch(&mut model, &requests, &tight);
    assert!(stats.scheduler.preemptions > 0, "{:?}", stats.scheduler);
    for (i, (c, want)) in out.iter().zip(&expected).enumerate() {
        assert_eq!(&c.ids, want, "request {i}");
    }
}

#[test]
fn sixty_four_prompts_sharing_a_200_token_prefix_hit_the_prefix_cache() {
    let mut model = load("gqa4-long-rope", DType::F32);
    let vocab = model.config().vocab_size;
    let shared = ids(7, 200, vocab);
    let requests: Vec<Request> = (0..64u32)
        .map(|i| Request {
            prompt: [shared.clone(), ids(i, 1 + i as usize % 8, vocab)].concat(),
            max_new_tokens: 4,
            ..Request::default()
        })
        .collect();
    let (cached, stats) = batch(&mut model, &requests, &BatchOptions::default());
    let (uncached, _) = batch(&mut model, &requests, &BatchOptions { prefix_cache: false, ..BatchOptions::default() });
    assert_eq!(cached, uncached);
    // 63 of 64 prompts find 192 of their 201..208 tokens (12 full blocks of 16) cached.
    assert_eq!(stats.scheduler.hit_tokens, 63 * 192);
    assert!(stats.prefix_hit_rate() > 0.9, "hit rate {}", stats.prefix_hit_rate());
}

#[test]
fn context_end_and_stop_strings_end_requests_as_alone() {
    let mut model = load("gqa1-tied-f32", DType::F32);
    let max = model.config().max_position_embeddings;
    let tokenizer = Tokenizer::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/assets/qwen3/tokenizer.json"),
    )
    .unwrap();
    let long = Request { prompt: ids(3, max - 5, 384), max_new_tokens: 50, ..Request::default() };
    let free = Request { prompt: vec![5, 17, 42, 7], max_new_tokens: 24, ..Request::default() };
    let (out, _) =
        generate_batch(&mut model, &[long.clone(), free.clone()], &BatchOptions::default(), Some(&tokenizer), |_| {})
            .unwrap();
    // Alone, generation stops once the KV cache holds the whole context: 6 tokens here.
    assert_eq!(out[0].ids, solo(&mut model, &long));
    assert_eq!((out[0].ids.len(), out[0].finish), (6, FinishReason::ContextFull));
    assert_eq!(out[1].finish, FinishReason::Length);
    let text = out[1].text.clone();
    assert_eq!(text, tokenizer.decode(&out[1].ids, false).unwrap());

    // A stop string from the middle of the text, spanning tokens: the text ends before it.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let stopped = Request { stop: vec![stop.clone()], ..free };
    let (out, _) = generate_batch(&mut model, &[stopped], &BatchOptions::default(), Some(&tokenizer), |_| {}).unwrap();
    assert_eq!(out[0].finish, FinishReason::Stop);
    assert_eq!(out[0].text, text[..text.find(&stop).unwrap()]);
}

#[test]
fn bad_requests_are_errors_naming_the_request() {
    let mut model = load("gqa1-tied-f32", DType::F32);
    let ok = Request { prompt: vec![1, 2, 3], max_new_tokens: 4, ..Request::default() };
    let run = |model: &mut Qwen3Cpu, bad: Request, options: &BatchOptions| {
        let err = generate_batch(model, &[ok.clone(), bad], options, None, |_| {}).unwrap_err();
        let ModelError::Request { index, source } = &err else { panic!("{err}") };
        assert_eq!(*index, 1);
        (err.to_string(), source.to_string())
    };
    let (msg, _) = run(&mut model, Request { prompt: vec![1, 999], ..ok.clone() }, &BatchOptions::default());
    assert!(msg.starts_with("request 1: token id 999 is out of range"), "{msg}");
    let (_, msg) = run(&mut model, Request { prompt: vec![], ..ok.clone() }, &BatchOptions::default());
    assert!(msg.contains("empty"), "{msg}");
    let (_, msg) = run(&mut model, Request { stop: vec!["x".into()], ..ok.clone() }, &BatchOptions::default());
    assert!(msg.contains("need a tokenizer"), "{msg}");
    // 3 blocks of 4 tokens; the request needs 100 + 4 tokens.
    let tiny = budget_of(&model, 3);
    let (_, msg) = run(&mut model, Request { prompt: vec![1; 100], ..ok.clone() }, &tiny);
    assert!(msg.contains("104 tokens") && msg.contains("holds 12 tokens"), "{msg}");
    let sampling = SamplingParams { top_p: 0.0, ..SamplingParams::default() };
    let (_, msg) = run(&mut model, Request { sampling, ..ok.clone() }, &BatchOptions::default());
    assert!(msg.contains("top_p"), "{msg}");
}

/// The step-wise session a server runs: requests join while others run, a cancelled sequence
/// gives its KV blocks back at once, and the rest still get their solo outputs; asking for
/// log-probabilities changes no token.
#[test]
fn a_session_takes_requests_between_steps_and_cancels_at_once() {
    use smelt::models::batch::{BatchEvent, BatchSession, SeqOptions};
    let mut model = load("gqa1-tied-f32", DType::F32);
    let requests = mixed_requests(model.config().vocab_size);
    let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut model, r)).collect();
    let options = BatchOptions { prefix_cache: false, ..BatchOptions::default() };
    let mut session = BatchSession::new(&mut model, &options, None).unwrap();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    let mut logprob_events = 0;
    let with_logprobs = SeqOptions { top_logprobs: Some(2), ..SeqOptions::default() };
    assert!(session.add(4, &requests[4], SeqOptions::default()).unwrap().is_none());
    assert!(session.add(4, &requests[1], SeqOptions::default()).is_err(), "an id already live");
    let mut step = |session: &mut BatchSession<'_, '_>, got: &mut Vec<Vec<u32>>| {
        session
            .step(|e| {
                if let BatchEvent::Token { request, token, logprobs, .. } = e {
                    got[request].push(token);
                    if let Some(lp) = logprobs {
                        assert_eq!((lp.token, lp.top.len()), (token, 2));
                        assert!(lp.logprob <= 0.0 && lp.top[0].1 >= lp.logprob);
                        logprob_events += 1;
                    }
                }
            })
            .unwrap()
    };
    step(&mut session, &mut got);
    step(&mut session, &mut got);
    // Joins after two steps of request 4 (11 new tokens); request 2 asks for log-probabilities.
    session.add(1, &requests[1], SeqOptions::default()).unwrap();
    session.add(2, &requests[2], with_logprobs).unwrap();
    step(&mut session, &mut got);
    let held = session.usage().blocks_used;
    assert!(held > 0 && session.usage().running == 3, "{:?}", session.usage());
    assert!(session.cancel(1));
    assert!(!session.cancel(1), "cancelled already");
    assert!(session.usage().blocks_used < held, "the cancelled sequence's blocks are free at once");
    while !session.is_idle() {
        step(&mut session, &mut got);
    }
    assert_eq!(session.usage().blocks_used, 0);
    assert_eq!(got[4], expected[4]);
    assert_eq!(got[2], expected[2]);
    assert_eq!(logprob_events, expected[2].len());
    assert!(got[1].len() < expected[1].len() || expected[1].len() <= 1);
}
