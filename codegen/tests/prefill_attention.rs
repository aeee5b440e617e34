//! The prefill attention kernel compiles with NVRTC for sm_80 and sm_90 without spills, for
//! Qwen3-0.6B's shapes; its launch covers T = 2048 with one block per work item; its source is
//! snapshotted. Without libnvrtc the compile test says so and passes, except under `CI=true`.

mod common;

use smelt_codegen::kernels::attention::AttentionSpec;
use smelt_codegen::kernels::prefill_attention::{prefill_attention, PrefillAttentionSpec};
use smelt_codegen::kernels::View;
use smelt_codegen::{Kernel, PRELUDE};
use smelt_ir::{Bindings, DType};

/// Qwen3-0.6B's attention: 16 query heads, 8 KV heads, D = 128, q the first 2048 columns of
/// the fused qkv row of 4096.
fn qwen3_0_6b(dtype: DType, norm_rope: bool) -> PrefillAttentionSpec {
    PrefillAttentionSpec {
        heads: 16,
        kv_heads: 8,
        d: 128,
        dtype,
        scale: (128.0f32).powf(-0.5),
        q_view: View { offset: 0, row_stride: 4096, from_last_row: false },
        norm_rope_eps: norm_rope.then_some(1e-6),
    }
}

fn all_variants() -> Vec<Kernel> {
    let mut v = Vec::new();
    for dtype in [DType::BF16, DType::F16] {
        for norm_rope in [false, true] {
            let name = format!("l00_prefill_attn_{dtype}{}", if norm_rope { "_nr" } else { "" });
            v.push(prefill_attention(&name, &qwen3_0_6b(dtype, norm_rope)));
        }
    }
    v
}

#[test]
fn supports_d128_in_16_bit_types_only() {
    assert!(PrefillAttentionSpec::supports(128, DType::BF16));
    assert!(PrefillAttentionSpec::supports(128, DType::F16));
    assert!(!PrefillAttentionSpec::supports(128, DType::F32));
    assert!(!PrefillAttentionSpec::supports(64, DType::BF16));
    assert!(!PrefillAttentionSpec::supports(256, DType::F16));
}

#[test]
#[should_panic(expected = "unsupported")]
fn other_head_dims_are_refused() {
    prefill_attention("x", &PrefillAttentionSpec { d: 64, ..qwen3_0_6b(DType::BF16, false) });
}

#[test]
fn launch_and_parameters() {
    let k = prefill_attention("l00_attn", &qwen3_0_6b(DType::BF16, true));
    assert_eq!((k.name.as_str(), k.kind), ("l00_attn", "prefill_attention"));
    assert_eq!((k.launch.block, k.launch.shared_bytes), (128, 0));
    let blocks = |t: usize, p: usize| k.launch.grid.blocks(&Bindings { batch: 1, new_tokens: t, cached_tokens: p });
    // T * heads / 64 query rows per block: the work items are KVH * ceil(T * G / 64) (8 at
    // T = 1 and 32 at T = 100, taken grid-stride), exactly 512 at T = 2048.
    assert_eq!(blocks(1, 0), 1);
    assert_eq!(blocks(100, 0), 25);
    assert_eq!(blocks(2048, 0), 512);
    assert_eq!(blocks(2048, 4096), 512, "the cached context does not change the grid");
    assert!(k.source.contains(
        "l00_attn(const smelt_pa_t* __restrict__ q, const smelt_pa_t* __restrict__ q_norm_w, \
         const int* __restrict__ positions, const float* __restrict__ inv_freq, \
         const smelt_pa_t* __restrict__ k_cache, const smelt_pa_t* __restrict__ v_cache, \
         smelt_pa_t* __restrict__ out, const smelt_step* __restrict__ step) {\n  SMELT_GRID_WAIT();\n  SMELT_GRID_LAUNCH();"
    ));
    assert!(k.source.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"));

    let plain = prefill_attention("l00_attn", &qwen3_0_6b(DType::F16, false));
    assert!(plain.source.contains(
        "l00_attn(const smelt_pa_t* __restrict__ q, const smelt_pa_t* __restrict__ k_cache, \
         const smelt_pa_t* __restrict__ v_cache, smelt_pa_t* __restrict__ out, const smelt_step* __restrict__ step)"
    ));
    assert!(plain.source.contains("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"));
    assert!(plain.source.contains("cvt.rn.f16x2.f32"));
    // No prologue: neither the positions operand nor the norm's epsilon (past the prelude,
    // whose step struct names row positions).
    let body = plain.source.strip_prefix(smelt_codegen::PRELUDE).expect("the prelude comes first");
    assert!(!body.contains("positions") && !body.contains("EPS"));
}

#[test]
fn from_decode_spec() {
    let decode = AttentionSpec {
        heads: 16,
        kv_heads: 8,
        d: 128,
        dtype: DType::BF16,
        scale: (128.0f32).powf(-0.5),
        q_view: View { offset: 0, row_stride: 4096, from_last_row: false },
        norm_rope_eps: Some(1e-6),
        split_tokens: 256,
        merge_splits: false,
    };
    assert_eq!(PrefillAttentionSpec::from(&decode), qwen3_0_6b(DType::BF16, true));
}

#[test]
fn prefill_attention_compiles_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    tc.check_all(&all_variants());
}

#[test]
fn prefill_attention_source() {
    let k = prefill_attention("l00_attn_attention", &qwen3_0_6b(DType::BF16, true));
    let body = k.source.strip_prefix(PRELUDE).expect("every kernel starts with the prelude");
    insta::assert_snapshot!(format!("// {} ({}): {:?}\n{body}", k.name, k.kind, k.launch));
}
