//! The decode attention kernels compile with NVRTC for sm_80 and sm_90 without spills, for
//! Qwen3-0.6B's shapes; their sources are snapshotted. Without libnvrtc the compile test says
//! so and passes, except under `CI=true` (see `tests/nvrtc.rs`).

mod common;

use smelt_codegen::kernels::attention::{decode_attention, decode_attention_scratch_bytes, AttentionSpec};
use smelt_codegen::kernels::View;
use smelt_codegen::{Kernel, Params, PRELUDE};
use smelt_ir::{Bindings, DType};

/// Qwen3-0.6B's attention: 16 query heads, 8 KV heads, D = 128, q the first 2048 columns of
/// the fused qkv row of 4096.
fn qwen3_0_6b(dtype: DType, norm_rope: bool, split_tokens: usize) -> AttentionSpec {
    AttentionSpec {
        heads: 16,
        kv_heads: 8,
        d: 128,
        dtype,
        scale: (128.0f32).powf(-0.5),
        q_view: View { offset: 0, row_stride: 4096, from_last_row: false },
        norm_rope_eps: norm_rope.then_some(1e-6),
        split_tokens,
        merge_splits: false,
    }
}

fn all_variants() -> Vec<(String, AttentionSpec)> {
    let mut v = Vec::new();
    for dtype in [DType::BF16, DType::F16] {
        for norm_rope in [false, true] {
            for split in [0, 256] {
                let name = format!("l00_attn_{dtype}{}_s{split}", if norm_rope { "_nr" } else { "" });
                v.push((name.clone(), qwen3_0_6b(dtype, norm_rope, split)));
                if split > 0 {
                    v.push((name, AttentionSpec { merge_splits: true, ..qwen3_0_6b(dtype, norm_rope, split) }));
                }
            }
        }
    }
    v
}

#[test]
fn kernels_and_launches() {
    let spec = qwen3_0_6b(DType::BF16, true, 256);
    let ks = decode_attention("l00_attn", &spec);
    let names: Vec<&str> = ks.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["l00_attn_split", "l00_attn_combine"]);
    assert_eq!((ks[0].kind, ks[1].kind), ("attention_split", "attention_combine"));
    let b = |p: usize| Bindings { batch: 1, new_tokens: 1, cached_tokens: p };
    // One split per 256 positions per KV head.
    assert_eq!(ks[0].launch.grid.blocks(&b(0)), 1);
    assert_eq!(ks[0].launch.grid.blocks(&b(4095)), 8 * 16);
    assert_eq!(ks[1].launch.grid.blocks(&b(4095)), 16);
    assert!(ks[0].source.contains("float* __restrict__ scratch, const smelt_step* __restrict__ step)"));
    assert!(ks[1]
        .source
        .contains("(const float* __restrict__ scratch, smelt_attn_t* __restrict__ out, const smelt_step*"));

    assert!(matches!(ks[0].params, Params::WritesScratch(_)) && ks[1].params == Params::ReadsScratch);

    // Merged: the split kernel alone, which also takes the arrival counters (one per KV head).
    let merged = decode_attention("l00_attn", &AttentionSpec { merge_splits: true, ..spec });
    assert_eq!(merged.len(), 1);
    assert_eq!((merged[0].name.as_str(), merged[0].kind), ("l00_attn_merged", "attention_merged"));
    assert_eq!(merged[0].launch.grid.blocks(&b(4095)), 8 * 16);
    assert!(matches!(merged[0].params, Params::SplitK { counters: 8, .. }), "{:?}", merged[0].params);
    assert!(merged[0].source.contains(
        "float* __restrict__ scratch, unsigned int* __restrict__ counters, const smelt_step* __restrict__ step)"
    ));

    let single = decode_attention("l00_attn", &qwen3_0_6b(DType::F16, false, 0));
    assert_eq!(single.len(), 1);
    assert_eq!((single[0].name.as_str(), single[0].kind), ("l00_attn", "attention"));
    assert_eq!(single[0].launch.grid.blocks(&b(100)), 8);
    assert!(single[0].source.contains(
        "(const smelt_attn_t* __restrict__ q, const smelt_attn_t* __restrict__ k_cache, \
         const smelt_attn_t* __restrict__ v_cache, smelt_attn_t* __restrict__ out, const smelt_step* __restrict__ step)"
    ));
}

#[test]
fn scratch_bytes_cover_every_split() {
    let spec = qwen3_0_6b(DType::BF16, true, 256);
    let per_record = (128 + 2) * 4;
    // Short contexts: one split per (token, KV head), 16 records of the two heads per group.
    assert_eq!(decode_attention_scratch_bytes(&spec, 1, 1), 16 + 8 * 2 * per_record);
    assert_eq!(decode_attention_scratch_bytes(&spec, 256, 1), 16 + 8 * 2 * per_record);
    // 4096 keys: 16 splits of 256.
    assert_eq!(decode_attention_scratch_bytes(&spec, 4096, 1), 16 + 8 * 16 * 2 * per_record);
    // 4097 keys: the grid has 129 blocks, so the kernel makes 16 splits of 257; still bounded by the grid.
    assert_eq!(decode_attention_scratch_bytes(&spec, 4097, 1), 16 + 129 * 2 * per_record);
    // Monotonic in the context and in T, so the largest sizes bound every launch.
    let mut last = 0;
    for context in (1..20000).step_by(37) {
        let bytes = decode_attention_scratch_bytes(&spec, context, 1);
        assert!(bytes >= last, "{context}");
        last = bytes;
    }
    assert!(decode_attention_scratch_bytes(&spec, 4096, 4) >= decode_attention_scratch_bytes(&spec, 4096, 1));
    assert_eq!(decode_attention_scratch_bytes(&qwen3_0_6b(DType::BF16, true, 0), 4096, 1), 0);
}

#[test]
fn decode_attention_compiles_for_every_arch_without_spills() {
    let Some(tc) = common::toolchain() else { return };
    let kernels: Vec<Kernel> = all_variants().iter().flat_map(|(name, spec)| decode_attention(name, spec)).collect();
    tc.check_all(&kernels);
}

/// The merged kernel's merge, after the split kernel's store (the rest is the split kernel's).
#[test]
fn merged_split_source() {
    let spec = AttentionSpec { merge_splits: true, ..qwen3_0_6b(DType::BF16, false, 256) };
    let ks = decode_attention("l00_attn_attention", &spec);
    let body = ks[0].source.strip_prefix(PRELUDE).expect("every kernel starts with the prelude");
    let merge = &body[body.find("smelt_arrive").map(|i| body[..i].rfind('\n').unwrap_or(0)).expect("an arrival")..];
    insta::assert_snapshot!(format!("// {} ({}): {:?}\n...{merge}", ks[0].name, ks[0].kind, ks[0].launch));
}

#[test]
fn split_and_combine_sources() {
    let ks = decode_attention("l00_attn_attention", &qwen3_0_6b(DType::BF16, true, 256));
    let text: String = ks
        .iter()
        .map(|k| {
            let body = k.source.strip_prefix(PRELUDE).expect("every kernel starts with the prelude");
            format!("// {} ({}): {:?}\n{body}", k.name, k.kind, k.launch)
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!(text);
}
