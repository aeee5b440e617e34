//! Qwen3 declared as an IR graph in primitive ops, following HF transformers'
//! `modeling_qwen3.py` line by line: RMSNorm and RoPE are written out so that fusing them is
//! the passes' work. Activations are token-major: `[T, hidden]`, heads as `[T, H, head_dim]`.

use smelt_ir::shape;
use smelt_ir::{
    BinaryOp, Bound, Builder, DType, Graph, IrError, KvPart, NodeId, ReduceOp, Role, Shape, Split, Sym, UnaryOp,
};

use crate::config::Qwen3Config;

pub const TOKEN_IDS: &str = "token_ids";
pub const POSITIONS: &str = "positions";
pub const LOGITS: &str = "logits";
pub const NEXT_TOKEN: &str = "next_token";
pub const EMBED: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The graph input (and output) holding layer `layer`'s key or value cache.
pub fn kv_name(layer: usize, part: KvPart) -> String {
    let k = match part {
        KvPart::Key => "k",
        KvPart::Value => "v",
    };
    format!("cache.l{layer:02}.{k}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Any number of new tokens `T` after `P` cached ones.
    Prefill,
    /// Exactly one new token.
    Decode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Logits at every new position (`smelt logits`).
    AllPositions,
    /// Only the last position's (generation); skips most of the lm_head work in prefill.
    LastPosition,
}

#[derive(Clone, Copy, Debug)]
pub struct DeclareOptions {
    pub phase: Phase,
    /// The execution dtype of weights, activations and the KV cache.
    pub dtype: DType,
    pub logits: Logits,
}

/// Declares Qwen3 for `cfg`. Inputs: `token_ids i32[T]`, `positions i32[T]`, and per layer
/// `cache.lNN.k`/`.v` [P, KVH, head_dim]. Outputs: `logits` f32, `next_token` (greedy) i32,
/// and every updated cache under its input's name, so a runtime feeds them back next step.
/// Each plays its [`Role`], which is how the runtimes find them; every node of a decoder layer
/// is marked with its layer, and the nodes that root kernels carry the kernels' labels.
pub fn declare(cfg: &Qwen3Config, opts: DeclareOptions) -> Result<Graph, IrError> {
    let dt = opts.dtype;
    let t: smelt_ir::Dim = match opts.phase {
        Phase::Prefill => Sym::NewTokens.into(),
        Phase::Decode => 1.into(),
    };
    let mut b = Builder::new();
    if opts.phase == Phase::Decode {
        b.pin(Sym::NewTokens, 1);
    }
    let ids = b.input_as(TOKEN_IDS, DType::I32, Shape::new([t]), Role::TokenIds);
    let positions = b.input_as(POSITIONS, DType::I32, Shape::new([t]), Role::Positions);
    let d = cfg.hidden_size;

    // Tensor parallelism splits the vocabulary (each rank gathers its rows; lm_head's logits
    // are gathered), the attention heads and the MLP's intermediate features (Megatron).
    let embed = b.weight(EMBED, dt, shape![cfg.vocab_size, d])?;
    b.split(embed, Split::Rows { unit: 1 });
    let mut h = b.gather("embed", embed, ids)?;
    b.label(h, "embed");
    let (cos, sin) = b.scoped("rope", |b| rope_tables(b, cfg, positions, dt))?;
    for layer in 0..cfg.num_layers {
        h = b.in_layer(layer as u32, |b| {
            b.scoped(&format!("l{layer:02}"), |b| decoder_layer(b, cfg, layer, h, cos, sin, dt))
        })?;
    }
    let h = b.scoped("final_norm", |b| rms_norm(b, h, "model.norm.weight", cfg.rms_norm_eps))?;
    let h = match opts.logits {
        Logits::AllPositions => h,
        Logits::LastPosition => b.slice("last_position", h, 0, Bound::FromEnd(1), Bound::FromEnd(0))?,
    };
    let head_name = if cfg.tie_word_embeddings { EMBED } else { LM_HEAD };
    let head = b.weight(head_name, dt, shape![cfg.vocab_size, d])?;
    b.split(head, Split::Rows { unit: 1 });
    let logits = b.matmul("lm_head", h, head)?;
    let logits = b.cast("logits_f32", logits, DType::F32)?;
    b.label(logits, "lm_head");
    let next = b.op("greedy", smelt_ir::Op::ArgMax { axis: 1 }, &[logits])?;
    b.label(next, "");
    b.output_as(LOGITS, logits, Role::Logits)?;
    b.output_as(NEXT_TOKEN, next, Role::NextToken)?;
    b.finish()
}

/// HF's `Qwen3RMSNorm`: in f32, `x * rsqrt(mean(x²) + eps)`, cast back, then times the weight.
fn rms_norm(b: &mut Builder, x: NodeId, weight: &str, eps: f32) -> Result<NodeId, IrError> {
    let dt = b.dtype(x);
    let last = b.shape(x).rank() - 1;
    let width = b.shape(x).last().expect("rank >= 1");
    let w = b.weight(weight, dt, Shape::new([width]))?;
    let x32 = b.cast("to_f32", x, DType::F32)?;
    let sq = b.unary("square", UnaryOp::Square, x32)?;
    let var = b.reduce("mean", ReduceOp::Mean, sq, last)?;
    let eps = b.scalar("eps", DType::F32, eps)?;
    let var = b.add("add_eps", var, eps)?;
    let inv = b.unary("rsqrt", UnaryOp::Rsqrt, var)?;
    let y = b.mul("normalize", x32, inv)?;
    let y = b.cast("to_input_dtype", y, dt)?;
    b.mul("scale", w, y)
}

/// cos and sin of `position * inv_freq`, in f32 as HF computes them (bf16 angles lose
/// precision past a few hundred positions), cast to the model dtype, shaped `[T, 1, hd]` to
/// broadcast over heads.
fn rope_tables(b: &mut Builder, cfg: &Qwen3Config, positions: NodeId, dt: DType) -> Result<(NodeId, NodeId), IrError> {
    let hd = cfg.head_dim;
    // HF: 1 / base ** (arange(0, dim, 2) / dim), in f32.
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / hd as f32;
            1.0 / (cfg.rope_theta as f32).powf(exponent)
        })
        .collect();
    let inv_freq = b.constant("inv_freq", DType::F32, shape![hd / 2], inv_freq)?;
    let t = b.shape(positions).dims()[0];
    let pos = b.cast("positions_f32", positions, DType::F32)?;
    let pos = b.reshape("positions_col", pos, Shape::new([t, 1.into()]))?;
    let freqs = b.mul("freqs", pos, inv_freq)?;
    let emb = b.concat("emb", &[freqs, freqs], 1)?;
    let mut out = Vec::new();
    for (name, op) in [("cos", UnaryOp::Cos), ("sin", UnaryOp::Sin)] {
        let x = b.unary(name, op, emb)?;
        let x = b.cast(&format!("{name}_cast"), x, dt)?;
        out.push(b.reshape(&format!("{name}_heads"), x, Shape::new([t, 1.into(), hd.into()]))?);
    }
    Ok((out[0], out[1]))
}

/// HF's `apply_rotary_pos_emb` for one tensor: `x * cos + rotate_half(x) * sin`, where
/// `rotate_half(x) = cat(-x[.., d/2:], x[.., :d/2])` (the NeoX split-half layout).
fn apply_rope(b: &mut Builder, x: NodeId, cos: NodeId, sin: NodeId, hd: usize) -> Result<NodeId, IrError> {
    let half = hd / 2;
    let x1 = b.slice("x1", x, 2, Bound::FromStart(0), Bound::FromStart(half))?;
    let x2 = b.slice("x2", x, 2, Bound::FromStart(half), Bound::FromStart(hd))?;
    let neg = b.unary("neg_x2", UnaryOp::Neg, x2)?;
    let rotated = b.concat("rotate_half", &[neg, x1], 2)?;
    let a = b.mul("x_cos", x, cos)?;
    let c = b.mul("rot_sin", rotated, sin)?;
    b.add("rope", a, c)
}

/// `x @ weight^T`; tensor parallelism may split the weight as `split` says.
fn linear(b: &mut Builder, name: &str, x: NodeId, weight: &str, out: usize, split: Split) -> Result<NodeId, IrError> {
    let inp = b.shape(x).last().expect("rank >= 1");
    let w = b.weight(weight, b.dtype(x), Shape::new([out.into(), inp]))?;
    b.split(w, split);
    b.matmul(name, x, w)
}

#[allow(clippy::too_many_arguments)]
fn decoder_layer(
    b: &mut Builder,
    cfg: &Qwen3Config,
    layer: usize,
    h: NodeId,
    cos: NodeId,
    sin: NodeId,
    dt: DType,
) -> Result<NodeId, IrError> {
    let p = format!("model.layers.{layer}");
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let t = b.shape(h).dims()[0];

    let x = b.scoped("input_norm", |b| rms_norm(b, h, &format!("{p}.input_layernorm.weight"), cfg.rms_norm_eps))?;
    let attn = b.scoped("attn", |b| -> Result<NodeId, IrError> {
        // Whole heads per rank: q, k and v by output rows, o_proj by input columns.
        let heads = Split::Rows { unit: hd };
        let q = linear(b, "q_proj", x, &format!("{p}.self_attn.q_proj.weight"), nh * hd, heads)?;
        let k = linear(b, "k_proj", x, &format!("{p}.self_attn.k_proj.weight"), nkv * hd, heads)?;
        let v = linear(b, "v_proj", x, &format!("{p}.self_attn.v_proj.weight"), nkv * hd, heads)?;
        // Fused side by side, the three become one `qkv` kernel.
        for (node, label) in [(q, "q"), (k, "k"), (v, "v")] {
            b.label(node, label);
        }
        let q = b.reshape("q_heads", q, Shape::new([t, nh.into(), hd.into()]))?;
        let k = b.reshape("k_heads", k, Shape::new([t, nkv.into(), hd.into()]))?;
        let v = b.reshape("v_heads", v, Shape::new([t, nkv.into(), hd.into()]))?;
        let q = b.scoped("q_norm", |b| rms_norm(b, q, &format!("{p}.self_attn.q_norm.weight"), cfg.rms_norm_eps))?;
        let k = b.scoped("k_norm", |b| rms_norm(b, k, &format!("{p}.self_attn.k_norm.weight"), cfg.rms_norm_eps))?;
        let q = b.scoped("q_rope", |b| apply_rope(b, q, cos, sin, hd))?;
        let k = b.scoped("k_rope", |b| apply_rope(b, k, cos, sin, hd))?;
        // The q, k and v heads' kernel (`qkv_norm_rope_kv_append`) is named from these and
        // the appends' labels.
        b.label(q, "q");
        let cache_shape = shape![Sym::CachedTokens, nkv, hd];
        let (kn, vn) = (kv_name(layer, KvPart::Key), kv_name(layer, KvPart::Value));
        let cache = |part| Role::KvCache { layer: layer as u32, part };
        let k_cache = b.input_as(&kn, dt, cache_shape.clone(), cache(KvPart::Key));
        let v_cache = b.input_as(&vn, dt, cache_shape, cache(KvPart::Value));
        let k_all = b.op("k_append", smelt_ir::Op::KvAppend, &[k_cache, k])?;
        let v_all = b.op("v_append", smelt_ir::Op::KvAppend, &[v_cache, v])?;
        b.label(k_all, "k");
        b.label(v_all, "v");
        b.output(&kn, k_all)?;
        b.output(&vn, v_all)?;
        let scale = (hd as f32).powf(-0.5);
        let o = b.op("attention", smelt_ir::Op::Attention { scale }, &[q, k_all, v_all])?;
        b.label(o, "");
        let o = b.reshape("merge_heads", o, Shape::new([t, (nh * hd).into()]))?;
        linear(b, "o_proj", o, &format!("{p}.self_attn.o_proj.weight"), d, Split::Columns { unit: hd })
    })?;
    let h = b.add("attn_residual", h, attn)?;
    b.label(h, "o_proj_residual");

    let x = b.scoped("post_attn_norm", |b| {
        rms_norm(b, h, &format!("{p}.post_attention_layernorm.weight"), cfg.rms_norm_eps)
    })?;
    let mlp = b.scoped("mlp", |b| -> Result<NodeId, IrError> {
        let i = cfg.intermediate_size;
        let gate = linear(b, "gate_proj", x, &format!("{p}.mlp.gate_proj.weight"), i, Split::Rows { unit: 1 })?;
        let up = linear(b, "up_proj", x, &format!("{p}.mlp.up_proj.weight"), i, Split::Rows { unit: 1 })?;
        let act = b.unary("silu", UnaryOp::Silu, gate)?;
        let prod = b.binary("gate_up", BinaryOp::Mul, act, up)?;
        b.label(prod, "gate_up_swiglu");
        linear(b, "down_proj", prod, &format!("{p}.mlp.down_proj.weight"), d, Split::Columns { unit: 1 })
    })?;
    let out = b.add("mlp_residual", h, mlp)?;
    b.label(out, "down_residual");
    Ok(out)
}
