//! Tensor parallelism on the CPU backend (issue 14): each rank a thread holding its slices of
//! the weights, exchanging through in-process collectives. Against the same model on one rank:
//! logits at every prompt position and every greedy step through the KV cache, on every
//! fixture at every world its head counts allow (replicating KV heads when ranks outnumber
//! them), and the refusal of a world they do not allow.
//!
//! Tolerance: whole-tensor ‖N ranks − 1 rank‖/‖1 rank‖ ≤ 1e-5 in f32 (the sums of partial
//! products round in another order), and greedy ids identical.

mod common;

use common::*;
use smelt::ir::DType;
use smelt::models::qwen3::Logits;
use smelt::models::{LoadOptions, Qwen3Cpu};

const REL_TOL: f64 = 1e-5;
const STEPS: usize = 6;

fn load(name: &str, world: u32) -> Result<Qwen3Cpu, String> {
    let options = LoadOptions { dtype: DType::F32, fuse: true, tensor_parallel: world };
    Qwen3Cpu::load_with(&fixture_dir(name), options).map_err(|e| e.to_string())
}

/// A run's prefill logits, each decode step's logits, and the greedy ids.
type Outputs = (Vec<f32>, Vec<Vec<f32>>, Vec<u32>);

/// Prefill logits at every position, then `STEPS` greedy decode steps' logits and ids.
fn run(model: &mut Qwen3Cpu, prompt: &[u32]) -> Outputs {
    run_steps(model, prompt, STEPS)
}

/// `got` equals `want` (one rank's) within the tolerance, with the same greedy ids.
fn assert_same(what: &str, got: &Outputs, want: &Outputs) {
    let (rel, abs) = rel_err(&got.0, &want.0);
    assert!(rel <= REL_TOL, "{what}: prefill rel err {rel:.2e} (max abs {abs:.2e})");
    let mut worst = rel;
    for (i, (g, w)) in got.1.iter().zip(&want.1).enumerate() {
        let (rel, abs) = rel_err(g, w);
        assert!(rel <= REL_TOL, "{what}: decode step {i} rel err {rel:.2e} (max abs {abs:.2e})");
        worst = worst.max(rel);
    }
    assert_eq!(got.2, want.2, "{what}: greedy ids");
    eprintln!("{what}: worst rel err {worst:.2e}, greedy ids {:?}", got.2);
}

fn run_steps(model: &mut Qwen3Cpu, prompt: &[u32], steps_wanted: usize) -> Outputs {
    let prefill = model.forward(prompt, Logits::AllPositions).unwrap();
    let prefill = prefill.f32s().unwrap().to_vec();
    let vocab = prefill.len() / prompt.len();
    let mut next = argmax(&prefill[prefill.len() - vocab..]);
    let (mut steps, mut ids) = (Vec::new(), vec![next]);
    for _ in 0..steps_wanted {
        let logits = model.forward(&[next], Logits::LastPosition).unwrap();
        let row = logits.f32s().unwrap().to_vec();
        next = argmax(&row);
        ids.push(next);
        steps.push(row);
    }
    (prefill, steps, ids)
}

#[test]
fn every_fixture_at_every_world_its_heads_allow_matches_one_rank() {
    // (fixture, worlds it allows): query heads divisible by the world, KV heads divisible by it
    // or replicated.
    let cases = [
        ("gqa1-tied-f32", &[2, 4][..]),
        ("gqa2-untied-bf16-sharded", &[2, 4][..]),
        ("gqa4-long-rope", &[2, 4, 8][..]),
        ("one-token", &[2][..]),
    ];
    for (name, worlds) in cases {
        let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 200).collect();
        let want = run(&mut load(name, 1).unwrap(), &prompt);
        for &world in worlds {
            let mut model = load(name, world).unwrap_or_else(|e| panic!("{name} over {world} ranks: {e}"));
            assert_same(&format!("{name} over {world} ranks"), &run(&mut model, &prompt), &want);
        }
    }
}

#[test]
fn a_world_the_heads_do_not_allow_is_refused_naming_them() {
    // gqa1-tied-f32: 4 query heads of 16 rows; 3 ranks split them neither evenly nor by
    // replication; 8 ranks would hold overlapping query heads.
    let e = load("gqa1-tied-f32", 3).err().expect("3 ranks refused");
    assert!(e.contains("over 3 ranks") && e.contains("4 groups of 16"), "{e}");
    let e = load("gqa1-tied-f32", 8).err().expect("8 ranks refused");
    assert!(e.contains("over 8 ranks") && e.contains("overlapping"), "{e}");
}

#[test]
fn each_rank_holds_its_share_of_the_split_weights() {
    let bytes = |m: &Qwen3Cpu| -> Vec<usize> { m.rank_weights().map(|w| w.bytes()).collect() };
    let whole = bytes(&load("gqa4-long-rope", 1).unwrap())[0];
    let ranks = bytes(&load("gqa4-long-rope", 4).unwrap());
    assert_eq!(ranks.len(), 4);
    // Every rank the same; together the whole plus what is replicated (norms, KV heads).
    assert!(ranks.iter().all(|&b| b == ranks[0]), "{ranks:?}");
    let share = ranks[0] as f64 / whole as f64;
    eprintln!("gqa4-long-rope: {whole} bytes of weights on one rank, {ranks:?} over 4 ranks ({share:.3} each)");
    assert!(share < 0.3, "each rank holds {share:.3} of the weights");
}

#[test]
fn a_full_size_random_qwen3_0_6b_matches_one_rank() {
    let config = smelt::models::Qwen3Config::qwen3_0_6b();
    let load = |world| {
        let options = LoadOptions { dtype: DType::F32, fuse: true, tensor_parallel: world };
        Qwen3Cpu::with_random_weights(config.clone(), options, 7).unwrap()
    };
    let prompt = [9u32, 151, 20_000, 3_000, 151_000];
    let want = run_steps(&mut load(1), &prompt, 2);
    // 16 query heads, 8 KV heads: 16 ranks replicate each KV head twice.
    for world in [2, 16] {
        let what = format!("Qwen3-0.6B (random) over {world} ranks");
        assert_same(&what, &run_steps(&mut load(world), &prompt, 2), &want);
    }
}

#[test]
fn a_batch_over_two_ranks_gives_each_request_its_one_at_a_time_output() {
    use smelt::models::batch::{generate_batch, BatchOptions, Request};
    use smelt::models::{generate, Continuation};
    let (mut one, mut two) =
        (load("gqa2-untied-bf16-sharded", 1).unwrap(), load("gqa2-untied-bf16-sharded", 2).unwrap());
    let requests: Vec<Request> = (0..6u32)
        .map(|i| {
            let prompt = (0..3 + i * 7).map(|j| (j * 31 + i * 11 + 1) % 384).collect();
            Request { prompt, max_new_tokens: 4 + i as usize, ..Request::default() }
        })
        .collect();
    let solo =
        |m: &mut Qwen3Cpu, r: &Request| generate(m, &r.prompt, Continuation::new(r, None), |_, _| {}).unwrap().ids;
    let alone: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut two, r)).collect();
    let on_one_rank: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut one, r)).collect();
    assert_eq!(alone, on_one_rank, "one at a time, 2 ranks against 1");
    let options = BatchOptions { block_tokens: 4, ..BatchOptions::default() };
    let (done, _) = generate_batch(&mut two, &requests, &options, None, |_| {}).unwrap();
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.ids, alone[i], "request {i} in the batch over 2 ranks");
    }
}

/// 12 query heads over 3 KV heads (groups of 4): 3 ranks hold one KV head each, 6 ranks hold
/// each KV head twice and 12 four times (each rank's query heads read the one it holds); 2 and
/// 4 ranks split the KV heads neither evenly nor by replication.
#[test]
fn an_odd_head_layout_replicates_kv_heads_past_their_count() {
    let config =
        smelt::models::Qwen3Config::from_json_str(include_str!("fixtures/configs/odd-heads.json"), "odd-heads.json")
            .unwrap();
    let load = |world| {
        let options = LoadOptions { dtype: DType::F32, fuse: true, tensor_parallel: world };
        Qwen3Cpu::with_random_weights(config.clone(), options, 3).map_err(|e| e.to_string())
    };
    let prompt: Vec<u32> = (0..9).map(|i| (i * 41 + 3) % 384).collect();
    let want = run(&mut load(1).unwrap(), &prompt);
    for world in [3, 6, 12] {
        assert_same(&format!("odd heads (12/3) over {world} ranks"), &run(&mut load(world).unwrap(), &prompt), &want);
    }
    for world in [2, 4] {
        let e = load(world).err().expect("refused");
        assert!(e.contains("3 groups of 16") && e.contains(&format!("over {world} ranks")), "{e}");
    }
}
