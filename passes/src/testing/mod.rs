//! Shared test support for every pass in this crate: a generator of random small valid graphs
//! and an eval-equivalence check. A pass must preserve the meaning `smelt_ir::eval` gives a
//! graph, so the strongest generic test is "random graph in, same outputs out".
//!
//! The generator is a function of a seed (a seeded ChaCha8 stream) rather than a composed
//! proptest strategy: graphs are built step by step from what already exists, which a seed
//! drives far more simply, and a failing case is reproduced from one number.

use std::collections::HashMap;
use std::fmt;

use proptest::prelude::*;
use rand::Rng as _;
use smelt_ir::print::to_text;
use smelt_ir::shape::Bindings;
use smelt_ir::{eval, BinaryOp, Bound, Builder, DType, Dim, Graph, Node, NodeId, Op, ReduceOp, Shape, Sym, Tensor};
use smelt_ir::{Data, UnaryOp};

use crate::pass::{Pass, Report};

pub(crate) mod chains;

use chains::{Norm, Rope, NORM_MISSES, ROPE_MISSES};

/// A deterministic random stream: rand_chacha's ChaCha8 (the generator smelt samples with),
/// with the few draws the graph generator needs.
pub(crate) struct Rng(rand_chacha::ChaCha8Rng);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.0.random_bool(p)
    }

    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        self.0.random_range(-1.0..1.0)
    }

    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];
/// Few distinct values, so equal scalar constants (CSE's work) appear in most graphs.
const SCALARS: [f32; 4] = [0.5, 1.0, 2.0, -1.0];

/// A random graph with the seed that made it; its `Debug` prints the seed and the graph text
/// so a proptest failure can be read and replayed.
#[derive(Clone)]
pub(crate) struct RandomGraph {
    pub seed: u64,
    pub graph: Graph,
}

impl fmt::Debug for RandomGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", to_text(&self.graph, &format!("random_graph({})", self.seed)))
    }
}

/// Random graphs for `proptest!`: `fn test(case in graph_strategy()) { .. case.graph .. }`.
pub(crate) fn graph_strategy() -> impl Strategy<Value = RandomGraph> {
    any::<u64>().prop_map(|seed| RandomGraph { seed, graph: random_graph(seed) })
}

/// A random small valid graph: 1–3 inputs (`x0`..) over f32/bf16/f16 whose leading dim is
/// often `T`, scalar and vector constants (with repeats), 5–25 ops drawn from unary, binary
/// with broadcasting, reduce, matmul against a weight `[N, K]`, reshape (also no-op and
/// chained), slice (also whole-axis), concat (also of one operand), cast (also same-dtype and
/// to i32), exact repeats of earlier ops, 1–3 outputs (`y0`..) and usually some dead nodes.
/// Symbolic slices take at most one row, so any `T >= 1` evaluates it.
pub(crate) fn random_graph(seed: u64) -> Graph {
    let mut r = Rng::new(seed);
    let mut b = Builder::new();
    let mut pool: Vec<NodeId> = Vec::new();
    for i in 0..1 + r.below(3) {
        let rank = 1 + r.below(3);
        let mut dims: Vec<Dim> = (0..rank).map(|_| Dim::Fixed(1 + r.below(4))).collect();
        if r.chance(0.6) {
            dims[0] = Dim::Sym(Sym::NewTokens);
        }
        pool.push(b.input(&format!("x{i}"), r.pick(&FLOATS), Shape(dims)));
    }
    let mut history: Vec<Step> = Vec::new();
    let target = 5 + r.below(21);
    let mut made = 0;
    for attempt in 0..target * 20 {
        if made == target {
            break;
        }
        let name = format!("n{attempt}");
        let step = if !history.is_empty() && r.chance(0.12) {
            // An exact repeat, or a binary op with its operands swapped (equal only for
            // commutative ops, which CSE must not assume).
            let (op, mut xs) = history[r.below(history.len())].clone();
            if matches!(op, Op::Binary(_)) && r.chance(0.4) {
                xs.reverse();
            }
            b.op(&name, op.clone(), &xs).ok().map(|id| (id, (op, xs)))
        } else {
            random_op(&mut r, &mut b, &pool, &name)
        };
        if let Some((id, record)) = step {
            pool.push(id);
            // Often reshape a reshape at once, so chains are common and usually live.
            if matches!(record.0, Op::Reshape { .. }) && r.chance(0.5) {
                let to = random_reshape(&mut r, b.shape(id));
                pool.push(b.reshape(&format!("{name}_again"), id, to).expect("equal volume"));
            }
            history.push(record);
            made += 1;
        }
    }
    // Qwen3's chains, exact or one step off, so that the fusion matchers meet them (and their
    // near misses) among everything else.
    if r.chance(0.35) {
        add_norm_chain(&mut r, &mut b, &mut pool);
    }
    if r.chance(0.35) {
        add_norm_rope_chain(&mut r, &mut b, &mut pool);
    }
    // Outputs favour recent nodes, so earlier ones are often dead.
    for i in 0..1 + r.below(3) {
        let lo = pool.len().saturating_sub(6);
        let id = if r.chance(0.8) { pool[lo + r.below(pool.len() - lo)] } else { r.pick(&pool) };
        b.output(&format!("y{i}"), id).expect("fresh output name");
    }
    let mut g = b.finish().expect("the generator only keeps ops the builder accepted");
    if r.chance(0.3) {
        duplicate_weight(&mut r, &mut g);
    }
    smelt_ir::verify::verify(&g).expect("random graph verifies");
    g
}

/// An RMSNorm chain (half the time exact, else a random near miss) over a float node of the
/// pool with a fixed last dim; its root is an output, and joins the pool.
fn add_norm_chain(r: &mut Rng, b: &mut Builder, pool: &mut Vec<NodeId>) {
    let fits = |b: &Builder, x: NodeId| b.dtype(x).is_float() && b.shape(x).last().and_then(|d| d.fixed()).is_some();
    let candidates: Vec<NodeId> = pool.iter().copied().filter(|&x| fits(b, x)).collect();
    if candidates.is_empty() {
        return;
    }
    let x = r.pick(&candidates);
    let misses: Vec<Norm> =
        NORM_MISSES.iter().copied().filter(|&m| m != Norm::WrongAxis || chains::wrong_axis(b, x).is_some()).collect();
    let how = if r.chance(0.5) { Norm::Exact } else { r.pick(&misses) };
    let name = format!("norm{}", pool.len());
    let other = b.unary(&format!("{name}.other"), UnaryOp::Exp, x).expect("exp of a float");
    let root = chains::rms_norm(b, &name, x, other, how);
    // An output, or the chain could be dead and gone before a matcher sees it.
    b.output(&format!("{name}.out"), root).expect("fresh output name");
    pool.push(root);
}

/// A q/k norm + RoPE chain (half the time exact, else a random near miss) over a new input
/// `[T, H, D]`, reading the `positions` inputs; its root is an output, and joins the pool.
fn add_norm_rope_chain(r: &mut Rng, b: &mut Builder, pool: &mut Vec<NodeId>) {
    let how = if r.chance(0.5) { Rope::Exact } else { r.pick(&ROPE_MISSES) };
    let (heads, d) = (1 + r.below(3), how.head_dim(2 * (1 + r.below(4))));
    let dt = r.pick(&FLOATS);
    let name = format!("rope{}", pool.len());
    let x = b.input(&format!("{name}.x"), dt, Shape(vec![Dim::Sym(Sym::NewTokens), Dim::Fixed(heads), Dim::Fixed(d)]));
    let t = Shape(vec![Dim::Sym(Sym::NewTokens)]);
    let (positions, other) = (b.input("positions", DType::I32, t.clone()), b.input("positions_b", DType::I32, t));
    let (root, shared) = chains::norm_rope(b, &name, x, positions, other, how);
    b.output(&format!("{name}.out"), root).expect("fresh output name");
    pool.push(root);
    if let Some(half) = shared {
        b.output(&format!("{name}.shared_half"), half).expect("fresh output name");
    }
}

/// An op and its operands, which a later step may emit again.
type Step = (Op, Vec<NodeId>);

/// Tries one random op on operands from `pool`; `None` when the pick does not type-check.
fn random_op(r: &mut Rng, b: &mut Builder, pool: &[NodeId], name: &str) -> Option<(NodeId, Step)> {
    let x = r.pick(pool);
    let (dt, shape) = (b.dtype(x), b.shape(x).clone());
    let fixed_axes: Vec<usize> = (0..shape.rank()).filter(|&i| shape.0[i].fixed().is_some()).collect();
    let (op, xs) = match r.below(9) {
        0 if dt.is_float() => {
            let u = [UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Square, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Recip];
            let u = [&u[..], &[UnaryOp::Sigmoid, UnaryOp::Silu, UnaryOp::Cos, UnaryOp::Sin]].concat();
            (Op::Unary(r.pick(&u)), vec![x])
        }
        1 | 2 if dt.is_float() => {
            let ops = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max];
            let partners: Vec<NodeId> = pool
                .iter()
                .copied()
                .filter(|&y| b.dtype(y) == dt && smelt_ir::infer::broadcast(&shape, b.shape(y)).is_ok())
                .collect();
            let y = if r.chance(0.5) { r.pick(&partners) } else { constant_like(r, b, dt, &shape)? };
            let (a, c) = if r.chance(0.5) { (x, y) } else { (y, x) };
            (Op::Binary(r.pick(&ops)), vec![a, c])
        }
        3 if dt.is_float() && shape.rank() > 0 => {
            let axis = r.below(shape.rank());
            let ops = if shape.0[axis].fixed().is_some() {
                &[ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][..]
            } else {
                &[ReduceOp::Sum, ReduceOp::Max][..]
            };
            (Op::Reduce { op: r.pick(ops), axis }, vec![x])
        }
        4 if dt.is_float() && shape.rank() >= 2 && shape.last()?.fixed().is_some() => {
            let n = 1 + r.below(4);
            let w =
                b.weight(&format!("w{}x{}", n, shape.last()?), dt, Shape(vec![Dim::Fixed(n), shape.last()?])).ok()?;
            (Op::MatMul, vec![x, w])
        }
        5 => (Op::Reshape { to: random_reshape(r, &shape) }, vec![x]),
        6 if shape.rank() > 0 => {
            let axis = r.below(shape.rank());
            // Bounds spelled from either end; a fixed axis is often sliced whole.
            let (start, end) = match shape.0[axis] {
                Dim::Fixed(n) => {
                    let (s, e) = if r.chance(0.4) { (0, n) } else { (r.below(n), n) };
                    let e = if e == n && r.chance(0.5) { e } else { s + 1 + r.below(n - s) };
                    let enc = |r: &mut Rng, i| if r.chance(0.5) { Bound::FromStart(i) } else { Bound::FromEnd(n - i) };
                    (enc(r, s), enc(r, e))
                }
                Dim::Sym(_) if r.chance(0.5) => (Bound::FromEnd(1), Bound::FromEnd(0)),
                Dim::Sym(_) => (Bound::FromStart(0), Bound::FromStart(1)),
            };
            (Op::Slice { axis, start, end }, vec![x])
        }
        7 if !fixed_axes.is_empty() => {
            let axis = r.pick(&fixed_axes);
            let fits = |y: &NodeId| {
                let s = b.shape(*y);
                b.dtype(*y) == dt
                    && s.rank() == shape.rank()
                    && s.0[axis].fixed().is_some()
                    && (0..s.rank()).all(|i| i == axis || s.0[i] == shape.0[i])
            };
            let partners: Vec<NodeId> = pool.iter().copied().filter(fits).collect();
            let xs: Vec<NodeId> = (0..r.below(3)).map(|_| r.pick(&partners)).collect();
            (Op::Concat { axis }, [vec![x], xs].concat())
        }
        _ => {
            let to = match r.below(4) {
                0 => dt,
                1 if dt.is_float() => DType::I32,
                _ => r.pick(&FLOATS),
            };
            (Op::Cast { to }, vec![x])
        }
    };
    let id = b.op(name, op.clone(), &xs).ok()?;
    Some((id, (op, xs)))
}

/// A constant of dtype `dt` that broadcasts against `shape`: a scalar, or `shape`'s suffix
/// with every dim fixed (symbolic dims become 1).
fn constant_like(r: &mut Rng, b: &mut Builder, dt: DType, shape: &Shape) -> Option<NodeId> {
    if r.chance(0.6) {
        return b.scalar("c", dt, r.pick(&SCALARS)).ok();
    }
    let keep = r.below(shape.rank() + 1);
    let dims: Vec<Dim> = shape.0[shape.rank() - keep..]
        .iter()
        .map(|d| if r.chance(0.3) { Dim::Fixed(1) } else { Dim::Fixed(d.fixed().unwrap_or(1)) })
        .collect();
    let n = dims.iter().map(|d| d.fixed().unwrap_or(1)).product();
    let values = (0..n).map(|i| SCALARS[i % SCALARS.len()]).collect();
    b.constant("c", dt, Shape(dims), values).ok()
}

/// A shape of equal volume: the same one (a no-op), or the fixed volume split into 1–3
/// random factors with the symbolic dims dropped in at random positions.
fn random_reshape(r: &mut Rng, shape: &Shape) -> Shape {
    if r.chance(0.25) {
        return shape.clone();
    }
    let (mut rest, syms) = shape.volume();
    let mut dims = Vec::new();
    for _ in 0..r.below(3) {
        let divisors: Vec<usize> = (1..=rest).filter(|d| rest % d == 0).collect();
        let d = r.pick(&divisors);
        dims.push(Dim::Fixed(d));
        rest /= d;
    }
    dims.push(Dim::Fixed(rest));
    for s in syms {
        dims.insert(r.below(dims.len() + 1), Dim::Sym(s));
    }
    Shape(dims)
}

/// Adds a second node for an existing weight name and a copy of one of the weight's users
/// reading it, as a new output: a duplicate that `Builder::weight` would never produce.
fn duplicate_weight(r: &mut Rng, g: &mut Graph) {
    let weights: Vec<NodeId> = g.weights().into_iter().map(|(_, id)| id).filter(|&w| !g.users(w).is_empty()).collect();
    if weights.is_empty() {
        return;
    }
    let w = r.pick(&weights);
    let user = r.pick(&g.users(w));
    let w2 = g.add_node(g.node(w).clone(), &[]);
    let operands: Vec<NodeId> = g.operands(user).into_iter().map(|x| if x == w { w2 } else { x }).collect();
    let copy = Node { name: Some("dup_weight_user".into()), ..g.node(user).clone() };
    let copy = g.add_node(copy, &operands);
    g.set_output("dup_weight", copy);
}

/// Tensors by name: graph inputs or weights.
pub(crate) type Tensors = HashMap<String, Tensor>;

/// Values for every input and weight of `graph` with `T = new_tokens` (unless the graph pins
/// it) and `P = 2` (likewise): floats uniform in [-1, 1) (rounded to their dtype), i32 inputs
/// in `0..4` (so a gather table needs at least 4 rows).
pub(crate) fn random_inputs(graph: &Graph, new_tokens: usize, seed: u64) -> (Tensors, Tensors) {
    let new_tokens = graph.pinned(Sym::NewTokens).unwrap_or(new_tokens);
    let bind = Bindings { batch: 1, new_tokens, cached_tokens: graph.pinned(Sym::CachedTokens).unwrap_or(2) };
    let mut r = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
    let mut tensor = |n: &Node| {
        let shape = n.shape.resolve(&bind);
        let len = shape.iter().product();
        match n.dtype {
            DType::I32 => Tensor::from_i32(shape, (0..len).map(|_| r.below(4) as i32).collect()),
            dt => Tensor::from_f32(dt, shape, (0..len).map(|_| r.unit()).collect()),
        }
    };
    let inputs = graph.inputs().into_iter().map(|(name, id)| (name, tensor(graph.node(id)))).collect();
    let mut weights = HashMap::new();
    for (name, id) in graph.weights() {
        weights.entry(name).or_insert_with(|| tensor(graph.node(id)));
    }
    (inputs, weights)
}

/// Adds the `a+b` weights a horizontally fused `graph` reads: its parts stacked along axis 0,
/// as a runtime does when it loads them.
pub(crate) fn add_concatenated_weights(graph: &Graph, weights: &mut Tensors) {
    for (name, id) in graph.weights() {
        if weights.contains_key(&name) || !name.contains(smelt_ir::WEIGHT_CONCAT) {
            continue;
        }
        let mut values = Vec::new();
        for part in name.split(smelt_ir::WEIGHT_CONCAT) {
            values.extend_from_slice(weights[part].f32s().expect("float weight"));
        }
        let node = graph.node(id);
        let shape: Vec<usize> =
            node.shape.dims().iter().map(|d| d.fixed().expect("weights have fixed shapes")).collect();
        weights.insert(name, Tensor::from_f32(node.dtype, shape, values));
    }
}

/// Evaluates `before` and `after` on the same random inputs and checks every output by name:
/// same dtype and shape; i32 exactly; floats with `‖a−b‖₂ ≤ rel_tol·‖b‖₂` over the finite
/// elements of `before`'s result `b`, where every non-finite element must be matched exactly
/// (NaN by NaN). `rel_tol = 0.0` therefore demands identical finite values.
#[track_caller]
pub(crate) fn assert_same_eval(before: &Graph, after: &Graph, new_tokens: usize, seed: u64, rel_tol: f64) {
    let (inputs, mut weights) = random_inputs(before, new_tokens, seed);
    add_concatenated_weights(after, &mut weights);
    let want = eval(before, inputs.clone(), &weights).expect("`before` evaluates");
    let got = eval(after, inputs, &weights).unwrap_or_else(|e| panic!("`after` fails to evaluate: {e}"));
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    let mut got_names: Vec<&String> = got.keys().collect();
    got_names.sort();
    assert_eq!(got_names, names, "output names differ");
    for name in names {
        let (a, b) = (&got[name], &want[name]);
        assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "output {name}: type differs");
        match (a.data(), b.data()) {
            (Data::I32(x), Data::I32(y)) => assert_eq!(x, y, "output {name}: i32 values differ"),
            (Data::F32(x), Data::F32(y)) => {
                let (mut diff, mut norm) = (0f64, 0f64);
                for (i, (&p, &q)) in x.iter().zip(y).enumerate() {
                    if !q.is_finite() || !p.is_finite() {
                        let same = (p.is_nan() && q.is_nan()) || p == q;
                        assert!(same, "output {name}[{i}]: {p} vs {q}");
                        continue;
                    }
                    diff += (p as f64 - q as f64).powi(2);
                    norm += (q as f64).powi(2);
                }
                let ok = diff.sqrt() <= rel_tol * norm.sqrt();
                assert!(ok, "output {name}: ‖a−b‖ = {} > {rel_tol} × ‖b‖ = {}", diff.sqrt(), norm.sqrt());
            }
            _ => panic!("output {name}: storage kinds differ"),
        }
    }
}

/// Runs `pass` on a copy of `graph`, checks the verifier accepts the result and returns both.
#[track_caller]
pub(crate) fn run_verified(pass: &dyn Pass, graph: &Graph) -> (Graph, Report) {
    let mut g = graph.clone();
    let report = pass.run(&mut g).unwrap_or_else(|e| panic!("{} failed: {e}", pass.name()));
    if let Err(e) = smelt_ir::verify::verify(&g) {
        panic!("{} left a graph the verifier rejects: {e}\n{}", pass.name(), to_text(&g, "after"));
    }
    (g, report)
}

#[cfg(test)]
mod tests;
