//! The generic elementwise kernel: a grid-stride loop over the output's elements, each input
//! read at its broadcast index, the fused body computed in f32 with storage rounding.

use smelt_ir::{DType, Expr, Shape};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, Params, GRID_WAIT};
use crate::expr::{render, LocalNames};
use crate::{Template, PRELUDE};

const BLOCK: u32 = 256;

/// The flat index into an input of `shape`, broadcast against the output's `coords`
/// (`c0..cN`, outermost first): broadcast dims contribute nothing.
fn broadcast_index(shape: &Shape, out: &Shape) -> String {
    let off = out.rank() - shape.rank();
    let mut terms = Vec::new();
    let mut stride = String::from("1u");
    for (j, d) in shape.dims().iter().enumerate().rev() {
        let broadcast = *d == smelt_ir::Dim::Fixed(1) && out.dims()[off + j] != smelt_ir::Dim::Fixed(1);
        if !broadcast {
            terms.push(format!("c{} * {stride}", off + j));
        }
        stride = format!("{stride} * {}", dim_expr(*d));
    }
    if terms.is_empty() {
        "0u".into()
    } else {
        terms.join(" + ")
    }
}

/// The kernel after the prelude: `$TIMES_DIMS` multiplies the output's dims onto `1u`;
/// `$COORDS` sets the output coordinates `c0..cN` from the flat index, innermost first, and
/// `$INPUTS` loads each input at its broadcast index (whole lines each, none for a scalar
/// output or no inputs); `$STORE` stores the rendered body.
const TEMPLATE: Template = Template::new("elementwise.cu", include_str!("elementwise.cu"));

/// Emits `name(in0…, out, step)` computing `body` over inputs of the given types into an
/// output of type `out`.
pub fn elementwise(name: &str, body: &Expr, inputs: &[(DType, Shape)], out: (DType, &Shape)) -> Kernel {
    let mut params: Vec<String> =
        inputs.iter().enumerate().map(|(i, (d, _))| format!("const {}* __restrict__ x{i}", storage_type(*d))).collect();
    params.push(format!("{}* __restrict__ y", storage_type(out.0)));
    params.push("const smelt_step* __restrict__ step".into());
    let dims = out.1.dims();
    let times_dims: String = dims.iter().map(|d| format!(" * {}", dim_expr(*d))).collect();
    // Output coordinates, innermost first.
    let coords: String = dims
        .iter()
        .enumerate()
        .rev()
        .map(|(j, d)| format!("    const unsigned int c{j} = rest % {0}; rest /= {0};\n", dim_expr(*d)))
        .collect();
    let loads: String = inputs
        .iter()
        .enumerate()
        .map(|(i, (dtype, shape))| {
            format!("    const float in{i} = {};\n", load(*dtype, &format!("x{i}"), &broadcast_index(shape, out.1)))
        })
        .collect();
    let kernel = TEMPLATE.fill(&[
        ("NAME", name),
        ("PARAMS", &params.join(", ")),
        ("GRID_WAIT", GRID_WAIT),
        ("TIMES_DIMS", &times_dims),
        ("COORDS", &coords),
        ("INPUTS", &loads),
        ("STORE", &store(out.0, "y", "i", &render(body, &LocalNames))),
    ]);
    // A grid-stride loop: enough blocks to cover the output, capped so huge tensors reuse them.
    let grid = Grid::Cover { shape: out.1.clone(), per_block: BLOCK, max: 4096 };
    Kernel {
        name: name.to_string(),
        kind: "elementwise",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch { block: BLOCK, grid, shared_bytes: 0 },
        params: Params::Standard,
    }
}
