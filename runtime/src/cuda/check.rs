//! Every kernel against the reference evaluator, on the data of a real step: launch by launch,
//! each node's operands are read back from the device before its kernels run, its output after,
//! and `ir::eval` computes the same op on the same operands. The arena and scratch are poisoned
//! (all bytes 0xFF: NaN in every float type) first, so an element a kernel fails to write shows
//! up as a non-finite value.

use std::collections::HashMap;

use smelt_ir::{eval, Bindings, DType, Dim, Graph, Node, NodeId, Op, Shape, Tensor, WeightSource};

use super::decoder::{CudaDecoder, Runner};
use super::device::Gpu;
use super::layout::{storage_of, tensor_from_storage};
use super::CudaError;

/// One node's comparison.
#[derive(Clone, Debug)]
pub struct NodeCheck {
    pub node: String,
    pub op: &'static str,
    pub kernels: Vec<String>,
    pub dtype: DType,
    pub elements: usize,
    /// ‖gpu − ref‖₂ / ‖ref‖₂ over the whole output.
    pub rel_err: f64,
    pub max_abs: f64,
    /// Elements that are NaN or infinite on the GPU but finite in the reference.
    pub nonfinite: usize,
    pub tolerance: f64,
    pub ok: bool,
}

/// What one checked run of a program gives (on a GPU or in the emulator): every node's
/// check, and the logits (`[rows, vocab]`).
pub struct CheckedRun {
    pub checks: Vec<NodeCheck>,
    pub logits: Tensor,
}

/// Relative error allowed per output dtype: a few roundings in the output's precision (the
/// kernels sum in another order than the evaluator); integer outputs must match exactly.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
        DType::F32 => 1e-4,
        DType::I32 => 0.0,
    }
}

pub(super) fn concrete(shape: &Shape, b: &Bindings) -> Shape {
    Shape::new(shape.resolve(b).into_iter().map(Dim::Fixed))
}

/// Runs one decode step on `token` launch by launch, checking every node; the step counts (the
/// cache advances) as with [`CudaDecoder::step`].
pub fn check_step(dec: &mut CudaDecoder, weights: &dyn WeightSource, token: u32) -> Result<Vec<NodeCheck>, CudaError> {
    dec.prepare(1)?;
    let checks = check_run(&dec.gpu, &dec.decode, dec.pdl, &[token], dec.position, weights)?;
    dec.position += 1;
    Ok(checks)
}

/// Runs `tokens` through the prefill program launch by launch (one chunk: at most the prefill
/// chunk size), checking every node; the tokens join the sequence as with
/// [`CudaDecoder::prefill`].
pub fn check_prefill(
    dec: &mut CudaDecoder,
    weights: &dyn WeightSource,
    tokens: &[u32],
) -> Result<Vec<NodeCheck>, CudaError> {
    dec.prepare(tokens.len())?;
    let Some(runner) = &dec.prefill else {
        return Err(CudaError::Unsupported("no prefill program was compiled".into()));
    };
    if tokens.is_empty() || tokens.len() > runner.layout.max_new_tokens {
        let message =
            format!("a checked prefill takes 1 to {} tokens, not {}", runner.layout.max_new_tokens, tokens.len());
        return Err(CudaError::Unsupported(message));
    }
    let checks = check_run(&dec.gpu, runner, dec.pdl, tokens, dec.position, weights)?;
    dec.position += tokens.len();
    Ok(checks)
}

/// One run of `runner` on `tokens` after `at` cached tokens, node by node against `ir::eval`.
fn check_run(
    gpu: &Gpu,
    runner: &Runner,
    pdl: bool,
    tokens: &[u32],
    at: usize,
    weights: &dyn WeightSource,
) -> Result<Vec<NodeCheck>, CudaError> {
    let b = Bindings { batch: 1, new_tokens: tokens.len(), cached_tokens: at };
    prepare_run(gpu, runner, tokens, at)?;
    check_launches(gpu, runner, pdl, 0..runner.layout.launches.len(), &b, weights)
}

/// Poisons `runner`'s arena and scratch (all bytes 0xFF) and writes the run's inputs.
pub(super) fn prepare_run(gpu: &Gpu, runner: &Runner, tokens: &[u32], at: usize) -> Result<(), CudaError> {
    let (arena, scratch) = (&runner.layout.arena, &runner.layout.scratch);
    gpu.fill(arena.ptr(), 0xff, arena.bytes(), "poisoning the arena")?;
    gpu.fill(scratch.ptr(), 0xff, scratch.bytes(), "poisoning the scratch buffer")?;
    runner.write_inputs(gpu, tokens, at)
}

/// Runs `runner`'s launches `range` (whole nodes), each node's checked against `ir::eval` on
/// the operands it saw.
pub(super) fn check_launches(
    gpu: &Gpu,
    runner: &Runner,
    pdl: bool,
    range: std::ops::Range<usize>,
    b: &Bindings,
    weights: &dyn WeightSource,
) -> Result<Vec<NodeCheck>, CudaError> {
    let graph = &runner.graph;
    let launches = &runner.layout.launches[..range.end];
    let mut checks = Vec::new();
    let mut i = range.start;
    while i < launches.len() {
        // The launches of one node, or of nodes co-launched in one kernel.
        let ids = launches[i].nodes.clone();
        let end = i + launches[i..].iter().take_while(|l| l.nodes == ids).count();
        // Operands first: an in-place kernel overwrites them. One that a node of this launch
        // computes (the lm_head's logits, for the argmax) is read after the launch: the node
        // is checked on what the kernel computed.
        let mut sub = Graph::new();
        let mut inputs = HashMap::new();
        let mut operands = Vec::new();
        let ours = |x: NodeId| ids.contains(&storage_of(graph, x));
        for &id in &ids {
            let of_node = graph
                .operands(id)
                .into_iter()
                .map(|x| if ours(x) { Ok(None) } else { import(gpu, runner, x, b, &mut sub, &mut inputs).map(Some) })
                .collect::<Result<Vec<_>, _>>()?;
            operands.push(of_node);
        }
        for l in i..end {
            runner.launch(gpu, l, b, pdl)?;
        }
        let names: Vec<String> = ids.iter().map(|&id| runner.node_name(id)).collect();
        gpu.synchronize(&format!("running {}", names.join(" + ")))?;
        let mut outputs = Vec::new();
        for (k, (&id, imported)) in ids.iter().zip(&operands).enumerate() {
            let of_node = graph
                .operands(id)
                .into_iter()
                .zip(imported)
                .map(|(x, imported)| match imported {
                    Some(done) => Ok(*done),
                    None => import(gpu, runner, x, b, &mut sub, &mut inputs),
                })
                .collect::<Result<Vec<_>, _>>()?;
            outputs.push(read_value(gpu, runner, id, b)?);
            let node = graph.node(id);
            let copy = Node { shape: concrete(&node.shape, b), ..node.clone() };
            let out = sub.add_node(copy, &of_node);
            sub.set_output(&format!("out{k}"), out);
        }
        let mut reference = eval(&sub, inputs, weights)
            .map_err(|e| CudaError::Layout(format!("evaluating {} on the CPU: {e}", names.join(" + "))))?;
        let kernel =
            |l: usize| runner.program.kernels[runner.program.launches[l].kernel_at(b.new_tokens).0].name.clone();
        let kernels: Vec<String> = (i..end).map(kernel).collect();
        for (k, (&id, gpu_out)) in ids.iter().zip(&outputs).enumerate() {
            let want = reference.remove(&format!("out{k}")).expect("an output per node");
            checks.push(compare(runner.node_name(id), graph.node(id).op.kind(), kernels.clone(), gpu_out, &want));
        }
        i = end;
    }
    Ok(checks)
}

/// Adds operand `x` to `sub`: weights and constants as they are, views over their imported
/// operand, anything else as an input holding the value read from the device.
fn import(
    gpu: &Gpu,
    runner: &Runner,
    x: NodeId,
    b: &Bindings,
    sub: &mut Graph,
    inputs: &mut HashMap<String, Tensor>,
) -> Result<NodeId, CudaError> {
    let graph = &runner.graph;
    let node = graph.node(x);
    let copy = Node { shape: concrete(&node.shape, b), ..node.clone() };
    match &node.op {
        Op::Weight { .. } | Op::Constant { .. } => Ok(sub.add_node(copy, &[])),
        op if op.is_view() => {
            let inner = import(gpu, runner, graph.operands(x)[0], b, sub, inputs)?;
            Ok(sub.add_node(copy, &[inner]))
        }
        _ => {
            let name = format!("v{}", x.index());
            inputs.insert(name.clone(), read_value(gpu, runner, x, b)?);
            let input = Node { op: Op::Input { name }, ..copy };
            Ok(sub.add_node(input, &[]))
        }
    }
}

/// The value of a non-view node as the device holds it. A cache (input or append) is read as
/// its first rows: with the identity block table the pages lie in order.
pub(super) fn read_value(gpu: &Gpu, runner: &Runner, id: NodeId, b: &Bindings) -> Result<Tensor, CudaError> {
    let graph = &runner.graph;
    let node = graph.node(id);
    let shape = node.shape.resolve(b);
    let bytes = shape.iter().product::<usize>() * node.dtype.size_bytes();
    let mut host = vec![0u8; bytes];
    let addr = runner.layout.address(graph, id)?;
    gpu.download(&mut host, addr, &format!("reading {}", runner.node_name(id)))?;
    Ok(tensor_from_storage(node.dtype, shape, &host))
}

pub(super) fn compare(
    node: String,
    op: &'static str,
    kernels: Vec<String>,
    gpu: &Tensor,
    reference: &Tensor,
) -> NodeCheck {
    let (a, r) = (gpu.to_f32_vec(), reference.to_f32_vec());
    let (mut diff2, mut ref2, mut max_abs, mut nonfinite) = (0f64, 0f64, 0f64, 0usize);
    for (&x, &y) in a.iter().zip(&r) {
        if !x.is_finite() && y.is_finite() {
            nonfinite += 1;
            continue;
        }
        let d = (x as f64 - y as f64).abs();
        if d.is_finite() {
            diff2 += d * d;
            max_abs = max_abs.max(d);
        }
        ref2 += (y as f64) * (y as f64);
    }
    let rel_err = if ref2 > 0.0 { (diff2 / ref2).sqrt() } else { diff2.sqrt() };
    let tol = tolerance(reference.dtype());
    let ok = nonfinite == 0 && a.len() == r.len() && gpu.shape() == reference.shape() && rel_err <= tol;
    NodeCheck {
        node,
        op,
        kernels,
        dtype: reference.dtype(),
        elements: r.len(),
        rel_err,
        max_abs,
        nonfinite,
        tolerance: tol,
        ok,
    }
}
