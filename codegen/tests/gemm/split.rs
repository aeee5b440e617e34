//! Split-K in the host emulation: K split 2, 3 (unevenly: 4, 5, 5 steps) and 8 ways, at M of
//! 1, 16, 17, 128 and 130 (two row tiles, the second of 2 rows), with the SwiGLU two-part and
//! the residual epilogues, and a grid smaller than the (tile, split) units (blocks loop over
//! them: a block is a non-last split of one unit, then the last of another). Each case
//! launches twice on the same counters, with blocks in order and in a seeded order (see
//! [`super::emulate`]): the same bits every time, and within the tolerance of `ir::eval`
//! [`super::compare_with_slack`] states; the same GEMMs unsplit (the A/B switch off), on the
//! same data, land within it too.

use smelt_codegen::kernels::gemm::gemm_split_k;
use smelt_codegen::kernels::Grid;
use smelt_ir::DType;

use super::{compare_with_slack, emulate, prepare, residual, swiglu, Case, Run};

/// The splits `case`'s kernel makes at `t` rows (1: none).
fn splits(case: &Case, t: usize) -> u32 {
    match case.kernel().launch.grid {
        Grid::Tiles { column_tiles, split_k: Some(s), .. } => s.splits(t.div_ceil(128) * column_tiles as usize),
        _ => 1,
    }
}

#[test]
fn emulated_split_k_matches_eval() {
    let (b, h) = (DType::BF16, DType::F16);
    let uneven = || Case::new("split3_uneven", h, 448, 128, Some(residual(h)));
    let swiglu130 = || Case::new("split2_swiglu", h, 320, 2 * 128, Some(swiglu(h)));
    // (case, T, grid override, the splits it must make, data seed)
    let cases: Vec<(Case, usize, Option<u32>, u32, u64)> = vec![
        (uneven(), 17, None, 3, 0),
        (Case::new("split2", b, 256, 64, None), 1, None, 2, 1),
        (Case::new("split8_swiglu", b, 1024, 2 * 64, Some(swiglu(b))), 1, None, 8, 2),
        (Case::new("split8_swiglu_3_blocks", b, 1024, 2 * 64, Some(swiglu(b))), 16, Some(3), 8, 3),
        (swiglu130(), 130, None, 2, 4),
        (Case::new("split3_residual", b, 384, 64, Some(residual(b))), 128, None, 3, 5),
        (uneven().unsplit(), 17, None, 1, 0),
        (swiglu130().unsplit(), 130, None, 1, 4),
    ];
    let runs: Vec<(Case, Run)> = cases
        .into_iter()
        .map(|(case, t, grid, want, seed)| {
            assert_eq!(splits(&case, t), want, "{} at T = {t}", case.name);
            assert_eq!(gemm_split_k(&case.spec()).is_some(), want > 1, "{}: scratch iff it splits", case.name);
            let run = prepare(&case, t, grid, 0x5917 + seed);
            (case, run)
        })
        .collect();
    let Some(outputs) = emulate(&runs) else { return };
    for ((case, run), got) in runs.iter().zip(&outputs) {
        // The residual (operand 2, [T, N] like the output) under each output's ulp.
        let residual: &[f32] =
            if case.name.contains("residual") || case.name.contains("uneven") { &run.buffers[2].1 } else { &[] };
        compare_with_slack(case, run.t, got, &run.want, residual);
    }
    for (split, unsplit) in [(0, 6), (4, 7)] {
        let (a, b) = (&outputs[split], &outputs[unsplit]);
        let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        eprintln!("{}: split vs unsplit, {differ} of {} outputs differ in bits", runs[split].0.name, a.len());
    }
}
