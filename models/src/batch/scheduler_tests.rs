//! The scheduler against a fake model whose "KV" of a token is a hash of the whole prefix up to
//! it, as a real model's KV depends on the position and on every token before: a step must
//! read back, through the sequence's block table, exactly its own prefix's values, and must
//! write only blocks no other sequence holds. (A "KV" of the token id alone could not see two
//! blocks of equal tokens after different prefixes being shared.) The next token is a hash of
//! all tokens so far, so a sequence's output depends on its whole history, as a model's does.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

struct FakeKv {
    block_tokens: usize,
    slots: HashMap<(BlockId, usize), u64>,
}

/// A hash of `tokens` of the fake's own, independent of the code under test (with the pool's
/// `chain_hash` a broken hash would break the fake the same way and hide itself).
fn digest(tokens: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tokens.hash(&mut h);
    h.finish()
}

/// The fake KV of position `p`: every token up to it, hashed.
fn kv_of(tokens: &[u32], p: usize) -> u64 {
    digest(&tokens[..=p])
}

impl FakeKv {
    fn run(&mut self, sched: &Scheduler, s: Scheduled) {
        let b = self.block_tokens;
        let (tokens, table) = (sched.tokens(s.seq), sched.blocks(s.seq));
        assert!(s.len > 0, "seq {} is scheduled to compute nothing", s.seq);
        assert!(table.len() * b >= s.start + s.len, "the table covers the step");
        for p in 0..s.start {
            let got = self.slots.get(&(table[p / b], p % b));
            assert_eq!(got, Some(&kv_of(tokens, p)), "seq {} reads position {p} through its table", s.seq);
        }
        for p in s.start..s.start + s.len {
            let block = table[p / b];
            assert_eq!(sched.pool().refs(block), 1, "seq {} writes block {block}, which is shared", s.seq);
            self.slots.insert((block, p % b), kv_of(tokens, p));
        }
    }
}

fn next_token(tokens: &[u32]) -> u32 {
    (digest(tokens) % 7) as u32
}

/// Runs every prompt to `new` generated tokens; returns the outputs and the stats.
fn run(
    prompts: &[Vec<u32>],
    new: usize,
    blocks: usize,
    block_tokens: usize,
    config: SchedulerConfig,
    caching: bool,
) -> (Vec<Vec<u32>>, SchedulerStats) {
    let mut sched = Scheduler::new(BlockPool::new(blocks, block_tokens, caching), config);
    let mut kv = FakeKv { block_tokens, slots: HashMap::new() };
    for (i, p) in prompts.iter().enumerate() {
        sched.add(i, p.clone());
    }
    let mut out = vec![Vec::new(); prompts.len()];
    let mut steps = 0;
    while !sched.is_idle() {
        steps += 1;
        assert!(steps < 10_000, "no progress");
        let plan = sched.schedule();
        assert!(!plan.is_empty(), "a busy scheduler schedules something");
        assert!(plan.len() <= config.max_batch.max(1), "{} sequences in a batch of {}", plan.len(), config.max_batch);
        assert!(plan.iter().map(|s| s.len).sum::<usize>() <= config.max_step_tokens.max(config.max_batch));
        for &s in &plan {
            kv.run(&sched, s);
        }
        for s in plan {
            if sched.advance(s.seq, s.len) {
                let token = next_token(sched.tokens(s.seq));
                out[s.seq].push(token);
                if out[s.seq].len() == new {
                    sched.finish(s.seq);
                } else {
                    sched.push_token(s.seq, token);
                }
            }
        }
    }
    assert_eq!(sched.pool().available(), blocks, "every block is back");
    (out, sched.stats())
}

fn solo(prompt: &[u32], new: usize) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..new {
        let t = next_token(&tokens);
        out.push(t);
        tokens.push(t);
    }
    out
}

fn config(max_batch: usize, max_step_tokens: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch, max_step_tokens }
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let prefix: Vec<u32> = (0..20).collect();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| [prefix.clone(), vec![100 + i, 7]].concat()).collect();
    let (out, stats) = run(&prompts, 3, 64, 4, config(8, 256), true);
    for (p, o) in prompts.iter().zip(&out) {
        assert_eq!(o, &solo(p, 3));
    }
    // The first prompt computes all 22 tokens; the other 7 find the 20 prefix tokens cached
    // (5 full blocks), having waited one step for the first to compute them.
    assert_eq!(stats.queried_tokens, 8 * 22);
    assert_eq!(stats.hit_tokens, 7 * 20);
    assert_eq!(stats.preemptions, 0);
}

/// B‖A then A‖B, one at a time: A's blocks hold the same tokens in both, after different
/// prefixes, so they must not be shared (a key of a block's own tokens alone would share them).
#[test]
fn equal_blocks_after_different_prefixes_are_not_shared() {
    let (a, b): (Vec<u32>, Vec<u32>) = ((1..=4).collect(), (5..=8).collect());
    let prompts = vec![[b.clone(), a.clone()].concat(), [a.clone(), b.clone()].concat()];
    for caching in [true, false] {
        for blocks in [10, 6] {
            let (out, stats) = run(&prompts, 3, blocks, 2, config(1, 64), caching);
            for (p, o) in prompts.iter().zip(&out) {
                assert_eq!(o, &solo(p, 3), "cache {caching}, {blocks} blocks");
            }
            assert_eq!(stats.hit_tokens, 0, "no prefix is shared, so nothing may hit");
        }
    }
}

/// A block's key covers every one of its tokens: B differs from A in one token of its second
/// block (the first or the last), so B's second block misses, and so must its third, whose
/// tokens are A's after a different prefix. Run again, B finds its own three blocks.
#[test]
fn a_block_is_keyed_by_all_of_its_tokens() {
    for changed in [4, 7] {
        let a: Vec<u32> = (0..13).collect();
        let mut b = a.clone();
        b[changed] = 99;
        let prompts = vec![a, b.clone(), b];
        let (out, stats) = run(&prompts, 2, 32, 4, config(1, 64), true);
        for (p, o) in prompts.iter().zip(&out) {
            assert_eq!(o, &solo(p, 2), "token {changed} changed");
        }
        // A: nothing; B: its first block (4 tokens); B again: three blocks (12).
        assert_eq!(stats.hit_tokens, 4 + 12, "token {changed} changed");
    }
}

#[test]
fn computed_counts_the_tokens_with_kv() {
    let mut sched = Scheduler::new(BlockPool::new(8, 2, false), config(1, 3));
    sched.add(0, vec![1, 2, 3, 4, 5]);
    assert_eq!(sched.computed(0), 0);
    let plan = sched.schedule();
    assert_eq!((plan[0].start, plan[0].len), (0, 3));
    assert!(!sched.advance(0, 3));
    assert_eq!(sched.computed(0), 3);
    let plan = sched.schedule();
    assert_eq!((plan[0].start, plan[0].len), (3, 2));
    assert!(sched.advance(0, 2));
    assert_eq!(sched.computed(0), 5);
    assert_eq!(sched.stats().computed_tokens, 5);
}

#[test]
fn without_caching_nothing_hits() {
    let prompts = vec![vec![1, 2, 3, 4, 5], vec![1, 2, 3, 4, 6]];
    let (out, stats) = run(&prompts, 4, 16, 2, config(4, 64), false);
    assert_eq!(out[1], solo(&prompts[1], 4));
    assert_eq!(stats.hit_tokens, 0);
}

#[test]
fn a_full_pool_preempts_the_youngest_and_recomputes_it() {
    // Each sequence alone needs 4 blocks of 2 tokens (3 + 5 tokens); two need 8 > 6.
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]];
    let (out, stats) = run(&prompts, 5, 6, 2, config(3, 64), false);
    for (p, o) in prompts.iter().zip(&out) {
        assert_eq!(o, &solo(p, 5));
    }
    assert!(stats.preemptions > 0, "{stats:?}");
}

#[test]
fn a_small_step_budget_chunks_the_prefill() {
    let prompts = vec![(0..30).collect::<Vec<u32>>()];
    let (out, stats) = run(&prompts, 2, 16, 4, config(1, 8), true);
    assert_eq!(out[0], solo(&prompts[0], 2));
    // 30 prompt tokens in chunks of 8 (4 steps), then one decode step.
    assert_eq!(stats.steps, 5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_schedule_gives_every_sequence_its_solo_output(
        shared in 0usize..12,
        tails in prop::collection::vec((1usize..10, 0u32..3), 1..7),
        new in 1usize..8,
        block_tokens in 1usize..5,
        extra_blocks in 0usize..12,
        max_batch in 1usize..5,
        max_step_tokens in 1usize..24,
        caching: bool,
    ) {
        let prompts: Vec<Vec<u32>> = tails
            .iter()
            .map(|&(len, seed)| (0..shared as u32).chain((0..len as u32).map(|t| t * 3 + seed)).collect())
            .collect();
        // The longest sequence alone always fits (the engine refuses requests that do not).
        let longest = prompts.iter().map(|p| p.len() + new).max().unwrap();
        let blocks = longest.div_ceil(block_tokens) + extra_blocks;
        let (out, _) = run(&prompts, new, blocks, block_tokens, config(max_batch, max_step_tokens), caching);
        for (p, o) in prompts.iter().zip(&out) {
            prop_assert_eq!(o, &solo(p, new));
        }
    }
}
