//! The generic elementwise kernel: a grid-stride loop over the output's elements, each input
//! read at its broadcast index, the fused body computed in f32 with storage rounding.

use std::fmt::Write;

use smelt_ir::{DType, Expr, Shape};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch};

const BLOCK: u32 = 256;
use crate::expr::{render, LocalNames};
use crate::PRELUDE;

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

/// Emits `name(in0…, out, step)` computing `body` over inputs of the given types into an
/// output of type `out`.
pub fn elementwise(name: &str, body: &Expr, inputs: &[(DType, Shape)], out: (DType, &Shape)) -> Kernel {
    let mut s = String::from(PRELUDE);
    let mut params: Vec<String> =
        inputs.iter().enumerate().map(|(i, (d, _))| format!("const {}* __restrict__ x{i}", storage_type(*d))).collect();
    params.push(format!("{}* __restrict__ y", storage_type(out.0)));
    params.push("const smelt_step* __restrict__ step".into());
    let _ = writeln!(s, "extern \"C\" __global__ void {name}({}) {{", params.join(", "));
    let dims = out.1.dims();
    let _ = writeln!(
        s,
        "  const unsigned int n = 1u{};",
        dims.iter().map(|d| format!(" * {}", dim_expr(*d))).collect::<String>()
    );
    let _ = writeln!(
        s,
        "  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {{"
    );
    // Output coordinates, innermost first.
    let _ = writeln!(s, "    unsigned int rest = i;");
    for (j, d) in dims.iter().enumerate().rev() {
        let _ = writeln!(s, "    const unsigned int c{j} = rest % {0}; rest /= {0};", dim_expr(*d));
    }
    let _ = writeln!(s, "    (void)rest;");
    for (i, (dtype, shape)) in inputs.iter().enumerate() {
        let _ =
            writeln!(s, "    const float in{i} = {};", load(*dtype, &format!("x{i}"), &broadcast_index(shape, out.1)));
    }
    let _ = writeln!(s, "    {}", store(out.0, "y", "i", &render(body, &LocalNames)));
    s.push_str("  }\n}\n");
    // A grid-stride loop: enough blocks to cover the output, capped so huge tensors reuse them.
    let grid = Grid::Cover { shape: out.1.clone(), per_block: BLOCK, max: 4096 };
    Kernel {
        name: name.to_string(),
        kind: "elementwise",
        source: super::wait_at_entry(s),
        launch: Launch { block: BLOCK, grid, shared_bytes: 0 },
    }
}
