//! A tensor-parallel group's collectives as kernels, for running every rank's program on one
//! device (or in the emulator) in place of NCCL: each kernel reads all `world` ranks' parts
//! and writes one rank's whole value, so an exchange is one launch per rank. Parameters:
//! `(part_0, …, part_{world-1}, y, step)` ([`Params::Standard`] with `world` operands).

use smelt_ir::{DType, Dim, Shape, Sym};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, Params, GRID_WAIT};
use crate::{Template, PRELUDE};

const BLOCK: u32 = 256;
/// Grid-stride: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 4096;

/// The all-reduce: the parts' sum in f32 in rank order, rounded once (`ir::eval`'s).
const SUM: Template = Template::new("exchange_sum.cu", include_str!("exchange_sum.cu"));
/// The all-gather: the parts concatenated along an axis, bit for bit.
const GATHER: Template = Template::new("exchange_gather.cu", include_str!("exchange_gather.cu"));

/// `Op::AllReduce { world }` over values of `shape` in `dtype` (a float type).
pub fn all_reduce(world: u32, dtype: DType, shape: &Shape) -> Kernel {
    assert!(dtype.is_float(), "an all-reduce of {dtype}");
    let name = format!("all_reduce_{world}_{dtype}_{}", shape_tag(shape));
    let elements = volume_expr(shape.dims());
    let (first, next, sum_store) =
        (load(dtype, "parts[0]", "i"), load(dtype, "parts[r]", "i"), store(dtype, "y", "i", "sum"));
    let source = fill(
        &SUM,
        &name,
        world,
        dtype,
        &[("ELEMENTS", &elements), ("FIRST", &first), ("NEXT", &next), ("STORE", &sum_store)],
    );
    kernel(name, "all_reduce", source, shape.clone())
}

/// `Op::AllGather { axis, world }` of parts of `part` shape in `dtype`.
pub fn all_gather(world: u32, dtype: DType, part: &Shape, axis: usize) -> Kernel {
    assert!(axis < part.rank(), "an all-gather along axis {axis} of a rank-{} value", part.rank());
    let name = format!("all_gather_{world}_{dtype}_{}_axis{axis}", shape_tag(part));
    let (outer, inner) = (volume_expr(&part.dims()[..axis]), volume_expr(&part.dims()[axis..]));
    let source = fill(&GATHER, &name, world, dtype, &[("OUTER", &outer), ("INNER", &inner)]);
    let mut whole = part.dims().to_vec();
    whole[axis] = match whole[axis] {
        Dim::Fixed(n) => Dim::Fixed(n * world as usize),
        sym => sym,
    };
    kernel(name, "all_gather", source, Shape::new(whole))
}

fn kernel(name: String, kind: &'static str, body: String, output: Shape) -> Kernel {
    Kernel {
        name,
        kind,
        source: format!("{PRELUDE}{body}"),
        launch: Launch {
            block: BLOCK,
            grid: Grid::Cover { shape: output, per_block: BLOCK, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}

/// `template` with the slots both exchanges have (the parts' parameters and the array that
/// indexes them, sizes, the PDL wait) and `extra`.
fn fill(template: &Template, name: &str, world: u32, dtype: DType, extra: &[(&str, &str)]) -> String {
    let storage = storage_type(dtype);
    let decls: Vec<String> = (0..world).map(|r| format!("    const {storage}* __restrict__ part{r},")).collect();
    let list: Vec<String> = (0..world).map(|r| format!("part{r}")).collect();
    let (decls, list, world, block) = (decls.join("\n"), list.join(", "), world.to_string(), BLOCK.to_string());
    let mut slots = vec![
        ("NAME", name),
        ("WORLD", &world[..]),
        ("BLOCK", &block[..]),
        ("PARTS", &decls[..]),
        ("PART_LIST", &list[..]),
        ("STORAGE", storage),
        ("GRID_WAIT", GRID_WAIT),
    ];
    slots.extend_from_slice(extra);
    template.fill(&slots)
}

/// The number of elements of `dims` as a C expression (64-bit).
fn volume_expr(dims: &[Dim]) -> String {
    let factors: Vec<String> = dims.iter().map(|&d| format!("(unsigned long long)({})", dim_expr(d))).collect();
    match factors.is_empty() {
        true => "1ull".into(),
        false => factors.join(" * "),
    }
}

/// A shape as part of a kernel name: `T x 1024` -> `t_1024`.
fn shape_tag(shape: &Shape) -> String {
    let dim = |d: &Dim| match d {
        Dim::Fixed(n) => n.to_string(),
        Dim::Sym(Sym::Batch) => "b".into(),
        Dim::Sym(Sym::NewTokens) => "t".into(),
        Dim::Sym(Sym::CachedTokens) => "p".into(),
        Dim::Sym(Sym::TotalTokens) => "s".into(),
    };
    shape.dims().iter().map(dim).collect::<Vec<_>>().join("_")
}
