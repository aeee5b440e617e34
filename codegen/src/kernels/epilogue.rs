//! A matmul's epilogue (`epilogue(acc)`, fused after the GEMM and the GEMV alike): which
//! accumulator parts and extra inputs it reads, and the C statements that compute and store
//! one output element.

use smelt_ir::{DType, Dim, Expr, ExprKind, Shape};

use super::{dim_expr, load, store};
use crate::expr::{render, Leaves, LocalNames};

/// The accumulator parts an expression reads (`Acc { parts }`), and which inputs it reads.
pub(super) fn leaves(e: &Expr, parts: &mut Vec<usize>, inputs: &mut Vec<usize>) {
    match &e.kind {
        ExprKind::Acc { parts: p, .. } if !parts.contains(p) => parts.push(*p),
        ExprKind::Input(i) if !inputs.contains(i) => inputs.push(*i),
        ExprKind::Unary(_, x) | ExprKind::Cast(x) => leaves(x, parts, inputs),
        ExprKind::Binary(_, a, b) => {
            leaves(a, parts, inputs);
            leaves(b, parts, inputs);
        }
        _ => {}
    }
}

/// A matmul's epilogue, checked: its body (`acc` when there is none), how many parts the N
/// weight rows split into (`Acc { parts }`), and the extra inputs it reads, in order.
pub(super) struct Epilogue {
    pub body: Expr,
    pub parts: usize,
    pub inputs: Vec<usize>,
}

impl Epilogue {
    /// Panics (naming `name`) on an epilogue the kernels cannot run: callers check shapes first.
    pub fn of(
        name: &str,
        epilogue: Option<&Expr>,
        dtype: DType,
        n: usize,
        out_dtype: DType,
        extras: usize,
    ) -> Epilogue {
        let (mut part_counts, mut inputs) = (Vec::new(), Vec::new());
        let body = epilogue.cloned().unwrap_or_else(|| Expr::new(ExprKind::Acc { part: 0, parts: 1 }, dtype));
        leaves(&body, &mut part_counts, &mut inputs);
        inputs.sort_unstable();
        assert!(part_counts.len() <= 1, "{name}: the epilogue {body} cuts the accumulator in different ways");
        let parts = part_counts.first().copied().unwrap_or(1);
        assert!(n % parts == 0, "{name}: N = {n} does not split into {parts} parts");
        assert_eq!(
            body.dtype, out_dtype,
            "{name}: the epilogue {body} yields {}, the output is {out_dtype}",
            body.dtype
        );
        if let Some(&i) = inputs.last() {
            assert!(i < extras, "{name}: the epilogue reads input {i} of {extras} extras");
        }
        Epilogue { body, parts, inputs }
    }

    /// The statements computing and storing output element `(r, col)`, one per line at
    /// `indent`: the accumulator parts (part p is `acc(p)`) rounded to storage as the
    /// matmul's output is, the extras at `(r, col)` (`rows` rows), then the fused body.
    pub fn statements(
        &self,
        indent: &str,
        acc: impl Fn(usize) -> String,
        (dtype, out_dtype): (DType, DType),
        extras: &[(DType, Shape)],
        (rows, n_out): (Dim, usize),
        name: &str,
    ) -> Vec<String> {
        let mut lines: Vec<String> = (0..self.parts)
            .map(|p| format!("{indent}const float {} = {};", LocalNames.acc(p, self.parts), round(dtype, &acc(p))))
            .collect();
        for &i in &self.inputs {
            let (d, shape) = &extras[i];
            let index = extra_index(shape, rows, n_out, name);
            lines.push(format!("{indent}const float in{i} = {};", load(*d, &format!("extra{i}"), &index)));
        }
        lines.push(format!("{indent}{}", store(out_dtype, "y", "r * N_OUT + col", &render(&self.body, &LocalNames))));
        lines
    }
}

/// `x` rounded to `dtype` (an f32 expression).
pub(super) fn round(dtype: DType, x: &str) -> String {
    match dtype {
        DType::BF16 => format!("smelt_round_bf16({x})"),
        DType::F16 => format!("smelt_round_f16({x})"),
        _ => x.to_string(),
    }
}

/// The flat index of an extra input of `shape` at output coordinates `(r, col)` of
/// `[rows, n_out]`, NumPy broadcasting: size-1 dims against a wider output contribute nothing.
pub(super) fn extra_index(shape: &Shape, rows: Dim, n_out: usize, name: &str) -> String {
    let dims = shape.dims();
    let rank = dims.len();
    let out = [rows, Dim::Fixed(n_out)];
    let (mut terms, mut stride) = (Vec::new(), String::new());
    for (j, d) in dims.iter().enumerate().rev() {
        let axis = (j + 2).checked_sub(rank);
        match axis {
            Some(a) if *d != Dim::Fixed(1) || out[a] == Dim::Fixed(1) => {
                let coord = ["r", "col"][a];
                terms.push(if stride.is_empty() { coord.to_string() } else { format!("{coord} * {stride}") });
            }
            Some(_) => {}
            None => assert_eq!(*d, Dim::Fixed(1), "{name}: extra input {shape} has more dims than [M, N_out]"),
        }
        stride = if stride.is_empty() { dim_expr(*d) } else { format!("{stride} * {}", dim_expr(*d)) };
    }
    if terms.is_empty() {
        "0u".into()
    } else {
        terms.reverse();
        terms.join(" + ")
    }
}
