//! The renderer and `ir::eval` agree on the meaning of fused bodies: random expression trees
//! (every unary and binary op, casts between f32/bf16/f16/i32, constants, all input dtypes) are
//! evaluated by `ir::eval` as an `Elementwise` op and, rendered to C with the prelude, by a
//! host C compiler; the results must be bit-identical (NaN matching NaN). The host `cc` and
//! Rust call the same libm, so transcendental functions agree exactly here; on the GPU they
//! are compared with a tolerance instead.

use std::collections::HashMap;
use std::fmt::Write;
use std::process::Command;

use smelt_ir::{BinaryOp, Builder, DType, Expr, ExprKind, FusedOp, Op, Shape, Tensor, UnaryOp};

use super::{render, Leaves, LocalNames};
use crate::PRELUDE;

const UNARY: [UnaryOp; 10] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Square,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Sigmoid,
    UnaryOp::Silu,
    UnaryOp::Cos,
    UnaryOp::Sin,
];
const BINARY: [BinaryOp; 5] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max];
const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];
const INPUT_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];
const LEN: usize = 64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32
    }
}

fn expr(kind: ExprKind, dtype: DType) -> Expr {
    Expr::new(kind, dtype)
}

/// A random tree whose value has `dtype`.
fn random_expr(r: &mut Rng, depth: usize, dtype: DType) -> Expr {
    if depth == 0 || r.below(4) == 0 {
        return match r.below(3) {
            0 => expr(ExprKind::Const((r.unit() - 0.5) * 8.0), dtype),
            _ => {
                let i = r.below(INPUT_DTYPES.len());
                let leaf = expr(ExprKind::Input(i), INPUT_DTYPES[i]);
                if INPUT_DTYPES[i] == dtype {
                    leaf
                } else {
                    expr(ExprKind::Cast(Box::new(leaf)), dtype)
                }
            }
        };
    }
    match r.below(7) {
        0..=2 => expr(ExprKind::Unary(UNARY[r.below(UNARY.len())], Box::new(random_expr(r, depth - 1, dtype))), dtype),
        3..=5 => {
            let (a, b) = (random_expr(r, depth - 1, dtype), random_expr(r, depth - 1, dtype));
            expr(ExprKind::Binary(BINARY[r.below(BINARY.len())], Box::new(a), Box::new(b)), dtype)
        }
        _ => {
            let from = FLOATS[r.below(FLOATS.len())];
            expr(ExprKind::Cast(Box::new(random_expr(r, depth - 1, from))), dtype)
        }
    }
}

fn inputs(r: &mut Rng) -> Vec<Tensor> {
    INPUT_DTYPES
        .iter()
        .map(|&d| Tensor::from_f32(d, vec![LEN], (0..LEN).map(|_| (r.unit() - 0.5) * 6.0).collect()))
        .collect()
}

/// `ir::eval` of `body` as an Elementwise op over `inputs`.
fn eval(body: &Expr, inputs: &[Tensor]) -> Vec<f32> {
    let mut b = Builder::new();
    let ids: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| b.input(&format!("x{i}"), t.dtype(), Shape::new([LEN.into()])))
        .collect();
    let out = b.op("body", Op::Fused(FusedOp::Elementwise { body: body.clone() }), &ids).expect("body type-checks");
    b.output("out", out).expect("one output");
    let g = b.finish().expect("verifies");
    let feed: HashMap<String, Tensor> = inputs.iter().enumerate().map(|(i, t)| (format!("x{i}"), t.clone())).collect();
    let weights: HashMap<String, Tensor> = HashMap::new();
    let out = smelt_ir::eval(&g, feed, &weights).expect("evaluates");
    out["out"].to_f32_vec()
}

/// A C program computing every case's body over its inputs and printing the result bits.
fn c_program(cases: &[(Expr, Vec<Tensor>)]) -> String {
    let mut c = String::from(PRELUDE);
    c.push_str("#include <stdio.h>\nint main(void) {\n");
    for (k, (body, inputs)) in cases.iter().enumerate() {
        for (i, t) in inputs.iter().enumerate() {
            let bits: Vec<String> = t.to_f32_vec().iter().map(|v| format!("0x{:08x}u", v.to_bits())).collect();
            let _ = writeln!(c, "  static const unsigned int c{k}_x{i}[{LEN}] = {{{}}};", bits.join(","));
        }
        let _ = writeln!(c, "  for (int e = 0; e < {LEN}; e++) {{");
        for i in 0..inputs.len() {
            let _ = writeln!(c, "    float in{i} = smelt_u2f(c{k}_x{i}[e]);");
        }
        let _ = writeln!(c, "    printf(\"%08x\\n\", smelt_f2u({}));\n  }}", render(body, &LocalNames));
    }
    c.push_str("  return 0;\n}\n");
    c
}

#[test]
fn rendered_bodies_match_eval_bit_for_bit() {
    let Ok(cc) = which_cc() else {
        crate::skip::missing_tool("rendered_bodies_match_eval_bit_for_bit", "no C compiler (cc) on PATH");
        return;
    };
    let mut r = Rng(0x5eed);
    let cases: Vec<(Expr, Vec<Tensor>)> = (0..300)
        .map(|k| {
            let dtype = FLOATS[k % FLOATS.len()];
            let body = random_expr(&mut r, 1 + k % 5, dtype);
            (body, inputs(&mut r))
        })
        .collect();
    let out = run_c(&cc, &c_program(&cases));
    let got: Vec<u32> = out.lines().map(|l| u32::from_str_radix(l, 16).expect("hex bits")).collect();
    assert_eq!(got.len(), cases.len() * LEN);
    let mut ops = 0;
    for (k, (body, inputs)) in cases.iter().enumerate() {
        ops += body.op_count();
        let want = eval(body, inputs);
        for (e, w) in want.iter().enumerate() {
            let g = f32::from_bits(got[k * LEN + e]);
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(
                same,
                "case {k}, element {e}: C gives {g:e}, eval gives {w:e}\nbody: {body}\nC: {}",
                render(body, &LocalNames)
            );
        }
    }
    eprintln!("{} bodies ({ops} ops) x {LEN} elements agree bit for bit", cases.len());
}

/// Compiles a C program with the host compiler and returns what it prints. No FMA contraction:
/// `ir::eval` rounds every product before it is added.
fn run_c(cc: &str, source: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let (src, exe) = (dir.path().join("prog.c"), dir.path().join("prog"));
    std::fs::write(&src, source).expect("write C source");
    let status = Command::new(cc).args(["-O1", "-ffp-contract=off", "-o"]).arg(&exe).arg(&src).arg("-lm").status();
    assert!(status.is_ok_and(|s| s.success()), "{cc} failed to compile {}", src.display());
    let out = Command::new(&exe).output().expect("run the compiled program");
    String::from_utf8(out.stdout).expect("ASCII output")
}

fn which_cc() -> Result<String, ()> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    Command::new(&cc).arg("--version").output().map(|_| cc).map_err(|_| ())
}

#[test]
fn leaves_and_literals() {
    let body = expr(
        ExprKind::Binary(
            BinaryOp::Mul,
            Box::new(expr(
                ExprKind::Unary(UnaryOp::Silu, Box::new(expr(ExprKind::Acc { part: 0, parts: 2 }, DType::BF16))),
                DType::BF16,
            )),
            Box::new(expr(ExprKind::Acc { part: 1, parts: 2 }, DType::BF16)),
        ),
        DType::BF16,
    );
    assert_eq!(
        render(&body, &LocalNames),
        "smelt_round_bf16(smelt_mul(smelt_round_bf16((acc_0of2 / (1.0f + expf(-acc_0of2)))), acc_1of2))"
    );
    assert_eq!(super::f32_literal(1.0), "smelt_u2f(0x3f800000u)");
    struct Global;
    impl Leaves for Global {
        fn input(&self, i: usize) -> String {
            format!("x{i}[idx]")
        }
        fn acc(&self, _: usize, _: usize) -> String {
            "acc".into()
        }
    }
    let add = expr(
        ExprKind::Binary(
            BinaryOp::Add,
            Box::new(expr(ExprKind::Input(0), DType::F32)),
            Box::new(expr(ExprKind::Const(0.5), DType::F32)),
        ),
        DType::F32,
    );
    assert_eq!(render(&add, &Global), "(x0[idx] + smelt_u2f(0x3f000000u))");
}

/// The prelude's host versions of the 16-bit loads and stores agree with the `half` crate for
/// every f16 and bf16 bit pattern, and for stores of 4096 floats across the f16 range.
#[test]
fn prelude_codecs_match_half() {
    let Ok(cc) = which_cc() else {
        crate::skip::missing_tool("prelude_codecs_match_half", "no C compiler (cc) on PATH");
        return;
    };
    let mut r = Rng(7);
    let floats: Vec<f32> = (0..4096).map(|i| (r.unit() - 0.5) * [1e-7, 1e-4, 1.0, 7e4][i % 4]).collect();
    let mut c = String::from(PRELUDE);
    c.push_str("#include <stdio.h>\nint main(void) {\n");
    c.push_str("  for (unsigned int h = 0; h < 65536u; h++) printf(\"%08x %08x\\n\", smelt_f2u(smelt_load_f16((unsigned short)h)), smelt_f2u(smelt_load_bf16((unsigned short)h)));\n");
    let bits: Vec<String> = floats.iter().map(|v| format!("0x{:08x}u", v.to_bits())).collect();
    let _ = writeln!(c, "  static const unsigned int xs[{}] = {{{}}};", floats.len(), bits.join(","));
    let _ = writeln!(c, "  for (int i = 0; i < {}; i++) printf(\"%04x %04x\\n\", smelt_store_f16(smelt_u2f(xs[i])), smelt_store_bf16(smelt_u2f(xs[i])));", floats.len());
    c.push_str("  return 0;\n}\n");
    let out = run_c(&cc, &c);
    let mut lines = out.lines();
    let same = |a: u32, b: f32| a == b.to_bits() || (f32::from_bits(a).is_nan() && b.is_nan());
    for h in 0..=u16::MAX {
        let line = lines.next().expect("one line per pattern");
        let (f, b) = line.split_once(' ').expect("two fields");
        let (f, b) = (u32::from_str_radix(f, 16).expect("hex"), u32::from_str_radix(b, 16).expect("hex"));
        assert!(same(f, half::f16::from_bits(h).to_f32()), "f16 load of {h:04x}: {f:08x}");
        assert!(same(b, half::bf16::from_bits(h).to_f32()), "bf16 load of {h:04x}: {b:08x}");
    }
    for x in &floats {
        let line = lines.next().expect("one line per float");
        let (f, b) = line.split_once(' ').expect("two fields");
        let (f, b) = (u16::from_str_radix(f, 16).expect("hex"), u16::from_str_radix(b, 16).expect("hex"));
        assert_eq!(f, half::f16::from_f32(*x).to_bits(), "f16 store of {x:e}");
        assert_eq!(b, half::bf16::from_f32(*x).to_bits(), "bf16 store of {x:e}");
    }
}
