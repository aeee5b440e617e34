//! One graph's program on the device: its layout, functions and the addresses of the
//! values the host writes and reads, launched kernel by kernel or captured as CUDA graphs.

use std::collections::HashMap;

use cudarc::driver::{sys, CudaFunction, CudaGraph};
use smelt_codegen::Program;
use smelt_ir::{Bindings, Dim, Graph, NodeId, Role, Sym};

use super::launch_raw;
use super::StepOutput;
use crate::cuda::device::{check, Gpu};
use crate::cuda::device_weights::DeviceWeights;
use crate::cuda::layout::{KvPool, Layout};
use crate::cuda::CudaError;

/// One graph's program on the device.
pub(crate) struct Runner {
    pub(crate) graph: Graph,
    pub(crate) program: Program,
    pub(crate) layout: Layout,
    pub(crate) functions: Vec<CudaFunction>,
    pub(crate) token_ids: u64,
    pub(crate) positions: u64,
    pub(crate) logits: (u64, usize),
    pub(crate) next_token: u64,
    /// Whether the outputs have a row per new token (else one row: the last position's).
    pub(crate) row_per_token: bool,
    /// Steps captured as CUDA graphs, by (new tokens, context bucket): each replays with the
    /// grids it was captured with.
    pub(crate) graphs: HashMap<(usize, usize), CudaGraph>,
}

impl Runner {
    pub(crate) fn new(
        gpu: &Gpu,
        graph: &Graph,
        program: Program,
        functions: Vec<CudaFunction>,
        weights: &DeviceWeights,
        kv: &KvPool,
        max_new_tokens: usize,
    ) -> Result<Runner, CudaError> {
        let layout = Layout::new(gpu, graph, &program, weights, kv, max_new_tokens)?;
        let find = |role: Role, found: Option<(String, NodeId)>| -> Result<NodeId, CudaError> {
            found.map(|(_, id)| id).ok_or_else(|| CudaError::Layout(format!("the graph has no {role} (a graph role)")))
        };
        let input = |role: Role| find(role, graph.input_with(role));
        let output = |role: Role| find(role, graph.output_with(role));
        let logits = graph.node(output(Role::Logits)?);
        let vocab = logits
            .shape
            .last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| CudaError::Layout("logits must be [T, vocab] with a fixed vocab".into()))?;
        let row_per_token = logits.shape.dims().first() == Some(&Dim::Sym(Sym::NewTokens));
        let address = |id: NodeId| layout.address(graph, id);
        Ok(Runner {
            row_per_token,
            token_ids: address(input(Role::TokenIds)?)?,
            positions: address(input(Role::Positions)?)?,
            logits: (address(output(Role::Logits)?)?, vocab),
            next_token: address(output(Role::NextToken)?)?,
            graph: graph.clone(),
            program,
            layout,
            functions,
            graphs: HashMap::new(),
        })
    }

    /// Writes `tokens`, their positions from `at`, and `smelt_step` (stream-ordered before the
    /// kernels).
    pub(crate) fn write_inputs(&self, gpu: &Gpu, tokens: &[u32], at: usize) -> Result<(), CudaError> {
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let positions: Vec<i32> = (at..at + tokens.len()).map(|p| p as i32).collect();
        gpu.upload(self.token_ids, &ids, "writing the token ids")?;
        gpu.upload(self.positions, &positions, "writing the positions")?;
        self.layout.write_step(gpu, tokens.len(), at)
    }

    /// The greedy token and (if `want_logits`) the logits of output row `row` (the graph's
    /// outputs have one row per new token, or one in all), the token at `position`. A greedy
    /// token of -1 means non-finite logits: an error, found with no extra transfer.
    pub(crate) fn read_outputs(
        &self,
        gpu: &Gpu,
        want_logits: bool,
        row: usize,
        position: usize,
        what: &str,
    ) -> Result<StepOutput, CudaError> {
        let mut next = [0i32; 1];
        gpu.download(&mut next, self.next_token + 4 * row as u64, what)?;
        let next_token = u32::try_from(next[0]).map_err(|_| CudaError::NonFiniteLogits { position })?;
        let logits = if want_logits {
            let mut v = vec![0f32; self.logits.1];
            let at = self.logits.0 + (4 * self.logits.1 * row) as u64;
            gpu.download(&mut v, at, "reading the logits")?;
            Some(v)
        } else {
            None
        };
        Ok(StepOutput { next_token, logits })
    }

    /// Launches launch `i` with grids sized for bindings `b`.
    pub(crate) fn launch(&self, gpu: &Gpu, i: usize, b: &Bindings, pdl: bool) -> Result<(), CudaError> {
        let l = &self.layout.launches[i];
        let (index, _) = self.program.launches[i].kernel_at(b.new_tokens);
        let params = l.params(index)?;
        let kernel = &self.program.kernels[index];
        let what = || {
            let nodes: Vec<String> = l.nodes.iter().map(|&id| self.node_name(id)).collect();
            format!("launching {} for {}", kernel.name, nodes.join(" + "))
        };
        // SAFETY: every parameter is a device address inside live buffers of this model, in the
        // order and number of the kernel's parameter list (the calling convention).
        unsafe { launch_raw(gpu, &self.functions[index], kernel, kernel.launch.grid.blocks(b), params, pdl, &what) }
    }

    pub(crate) fn node_name(&self, id: NodeId) -> String {
        self.graph.node(id).name.clone().unwrap_or_else(|| format!("%{}", id.index()))
    }

    /// Captures the whole step of `new_tokens` rows with grids sized for contexts up to
    /// `bucket`, unless it is captured already (then nothing happens); returns it.
    pub(crate) fn captured(
        &mut self,
        gpu: &Gpu,
        (new_tokens, bucket): (usize, usize),
        pdl: bool,
    ) -> Result<&CudaGraph, CudaError> {
        if !self.graphs.contains_key(&(new_tokens, bucket)) {
            let graph = self.capture(gpu, &Bindings { batch: 1, new_tokens, cached_tokens: bucket - 1 }, pdl)?;
            self.graphs.insert((new_tokens, bucket), graph);
        }
        Ok(&self.graphs[&(new_tokens, bucket)])
    }

    /// Captures the whole step with grids sized for bindings `b`.
    fn capture(&self, gpu: &Gpu, b: &Bindings, pdl: bool) -> Result<CudaGraph, CudaError> {
        let stream = &gpu.stream;
        check(
            "starting graph capture",
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        )?;
        let launched = (0..self.layout.launches.len()).try_for_each(|i| self.launch(gpu, i, b, pdl));
        let graph = check("ending graph capture", stream.end_capture(sys::CUgraphInstantiate_flags(0)));
        launched?;
        graph?.ok_or_else(|| CudaError::Unsupported("graph capture recorded nothing".into()))
    }
}
