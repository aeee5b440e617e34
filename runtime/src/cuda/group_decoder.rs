//! A tensor-parallel group on as many GPUs, one rank per device (`--device cuda
//! --tensor-parallel N`): rank r's decode and prefill programs run on device r with its weight
//! slices and its own KV pool, and each exchange between their launches is an NCCL collective
//! on the ranks' streams ([`NcclGroup`]). A decode step is captured once per context bucket as
//! one CUDA graph per device, the collectives inside, and replayed on every device. Every rank
//! holds the whole logits after their all-gather, so rank 0's greedy token and logits are the
//! step's.

use std::collections::HashMap;

use cudarc::driver::{sys, CudaGraph};
use smelt_ir::{Bindings, Op};

use super::decoder::{bucket, CudaDecoder, DecoderGraphs, DecoderOptions, Runner, StepOutput};
use super::device::{check, Gpu};
use super::device_weights::WeightBytes;
use super::group::{same_exchanges, segment};
use super::layout::label;
use super::nccl::{NcclGroup, Transfer};
use super::CudaError;

/// Which of the ranks' programs a run launches.
#[derive(Clone, Copy)]
enum Which {
    Decode,
    Prefill,
}

/// Fields drop in order: the captured graphs and the communicators before the devices' state.
pub struct GroupDecoder {
    /// Per context bucket, the decode step captured on each rank's device.
    graphs: HashMap<usize, Vec<CudaGraph>>,
    nccl: NcclGroup,
    ranks: Vec<CudaDecoder>,
    cuda_graphs: bool,
}

/// Makes `gpu`'s context current: the runtime's raw driver calls (copies, launches) act in the
/// current context, and a group has one per device.
fn bind(gpu: &Gpu) -> Result<(), CudaError> {
    check("making a rank's device current", gpu.ctx.bind_to_thread())
}

impl GroupDecoder {
    /// Rank r on `gpus[r]` (each a different device) with `graphs[r]` (its fused rank graphs;
    /// a batch graph is not taken) and its slices of `weights`. The communicators come first,
    /// so a missing libnccl fails before any weight is read.
    pub fn new(
        gpus: Vec<Gpu>,
        graphs: &[DecoderGraphs<'_>],
        weights: &dyn WeightBytes,
        options: &DecoderOptions,
    ) -> Result<GroupDecoder, CudaError> {
        if gpus.len() != graphs.len() || gpus.len() < 2 {
            let message = format!("a group of {} GPUs for {} rank programs", gpus.len(), graphs.len());
            return Err(CudaError::Unsupported(message));
        }
        let nccl = NcclGroup::new(&gpus.iter().collect::<Vec<_>>())?;
        // A batched step's logits are gathered along the vocabulary for many rows at once; NCCL's
        // all-gather concatenates whole parts, so that would need a permute this group lacks.
        let options = DecoderOptions { batch_rows: 0, ..options.clone() };
        let mut ranks = Vec::with_capacity(gpus.len());
        for (gpu, g) in gpus.into_iter().zip(graphs) {
            bind(&gpu)?;
            ranks.push(CudaDecoder::with_graphs(gpu, DecoderGraphs { batch: None, ..*g }, weights, &options)?);
        }
        same_exchanges(ranks.iter().map(|r| (&r.decode.graph, &r.decode.program)))?;
        if ranks.iter().all(|r| r.prefill.is_some()) {
            same_exchanges(ranks.iter().filter_map(|r| r.prefill.as_ref()).map(|p| (&p.graph, &p.program)))?;
        } else if ranks.iter().any(|r| r.prefill.is_some()) {
            return Err(CudaError::Layout("some ranks have a prefill program and some do not".into()));
        }
        Ok(GroupDecoder { graphs: HashMap::new(), nccl, ranks, cuda_graphs: options.cuda_graphs })
    }

    pub fn world(&self) -> usize {
        self.ranks.len()
    }

    /// Rank `r`'s decoder (its program, device bytes, JIT report).
    pub fn rank(&self, r: usize) -> Option<&CudaDecoder> {
        self.ranks.get(r)
    }

    pub fn position(&self) -> usize {
        self.ranks[0].position()
    }

    pub fn capacity(&self) -> usize {
        self.ranks[0].capacity()
    }

    pub fn has_prefill(&self) -> bool {
        self.ranks[0].has_prefill()
    }

    /// Starts a new sequence on every rank.
    pub fn reset(&mut self) {
        self.ranks.iter_mut().for_each(CudaDecoder::reset);
    }

    /// Runs one decode step on `token` at the next position on every rank; returns rank 0's
    /// greedy next token and, if `want_logits`, its logits.
    pub fn step(&mut self, token: u32, want_logits: bool) -> Result<StepOutput, CudaError> {
        let at = self.position();
        for rank in &mut self.ranks {
            bind(&rank.gpu)?;
            rank.write_inputs(token)?;
        }
        if self.cuda_graphs {
            let bucket = bucket(at + 1, self.capacity());
            if !self.graphs.contains_key(&bucket) {
                let captured = self.capture(bucket)?;
                self.graphs.insert(bucket, captured);
            }
            // Every device's graph is enqueued before any is waited for: each one's collectives
            // wait for the others'.
            for (r, graph) in self.graphs[&bucket].iter().enumerate() {
                check(&format!("replaying rank {r}'s decode step at position {at}"), graph.launch())?;
            }
        } else {
            self.run(Which::Decode, &Bindings { batch: 1, new_tokens: 1, cached_tokens: at })?;
        }
        self.ranks.iter_mut().for_each(|r| r.position += 1);
        let first = &self.ranks[0];
        bind(&first.gpu)?;
        first.decode.read_outputs(&first.gpu, want_logits, 0, at, &format!("running the decode step at position {at}"))
    }

    /// Runs `tokens` through every rank's prefill program (in chunks), kernel by kernel;
    /// returns the greedy token after the last one and, if `want_logits`, its logits.
    pub fn prefill(&mut self, tokens: &[u32], want_logits: bool) -> Result<StepOutput, CudaError> {
        if tokens.is_empty() {
            return Err(CudaError::Unsupported("prefill of no tokens".into()));
        }
        for rank in &mut self.ranks {
            bind(&rank.gpu)?;
            rank.prepare(tokens.len())?;
        }
        let chunk_tokens = match &self.ranks[0].prefill {
            Some(runner) => runner.layout.max_new_tokens,
            None => return Err(CudaError::Unsupported("no prefill program was compiled".into())),
        };
        let mut last = None;
        for (i, chunk) in tokens.chunks(chunk_tokens).enumerate() {
            let at = self.position();
            for rank in &self.ranks {
                let runner = rank.prefill.as_ref().expect("every rank has one (checked at load)");
                bind(&rank.gpu)?;
                runner.write_inputs(&rank.gpu, chunk, at)?;
            }
            self.run(Which::Prefill, &Bindings { batch: 1, new_tokens: chunk.len(), cached_tokens: at })?;
            self.ranks.iter_mut().for_each(|r| r.position += chunk.len());
            if (i + 1) * chunk_tokens >= tokens.len() {
                let (first, end) = (&self.ranks[0], self.position());
                let runner = first.prefill.as_ref().expect("checked above");
                let row = if runner.row_per_token { chunk.len() - 1 } else { 0 };
                let what = format!("running the prefill of positions {at}..{end}");
                bind(&first.gpu)?;
                last = Some(runner.read_outputs(&first.gpu, want_logits, row, end - 1, &what)?);
            }
        }
        Ok(last.expect("at least one chunk"))
    }

    fn runners(&self, which: Which) -> Vec<&Runner> {
        self.ranks
            .iter()
            .map(|r| match which {
                Which::Decode => &r.decode,
                Which::Prefill => r.prefill.as_ref().expect("every rank has one (checked at load)"),
            })
            .collect()
    }

    /// Enqueues every rank's `which` program for bindings `b`: each rank's launches up to an
    /// exchange, then the exchange on every rank as one NCCL group, and so on.
    fn run(&self, which: Which, b: &Bindings) -> Result<(), CudaError> {
        let runners = self.runners(which);
        let exchanges = runners[0].program.exchanges.len();
        for k in 0..=exchanges {
            for (rank, runner) in self.ranks.iter().zip(&runners) {
                bind(&rank.gpu)?;
                for i in segment(&runner.program, runner.layout.launches.len(), k) {
                    runner.launch(&rank.gpu, i, b, rank.pdl)?;
                }
            }
            if k < exchanges {
                self.exchange(&runners, k, b)?;
            }
        }
        Ok(())
    }

    /// Exchange `k` of the runners' programs as one NCCL collective: each rank sends its part
    /// (the exchange's operand) and receives the whole value (the exchange node's buffer).
    fn exchange(&self, runners: &[&Runner], k: usize, b: &Bindings) -> Result<(), CudaError> {
        let (g, x) = (&runners[0].graph, &runners[0].program.exchanges[k]);
        let part = g.node(x.operand_id);
        let what = label(g, x.node_id);
        let elements = part
            .shape
            .checked_volume(b)
            .ok_or_else(|| CudaError::Layout(format!("{what}: the part's size overflows")))?;
        let mut transfers = Vec::with_capacity(runners.len());
        for runner in runners {
            let (g, x) = (&runner.graph, &runner.program.exchanges[k]);
            transfers.push(Transfer {
                send: runner.layout.address(g, x.operand_id)?,
                receive: runner.layout.address(g, x.node_id)?,
            });
        }
        match g.node(x.node_id).op {
            // SAFETY (both arms): each address is its rank's buffer for this value on its
            // device, laid out for the runner's largest bindings, which `b` is within: the part
            // holds `elements` values, the whole `world` times as many.
            Op::AllReduce { .. } => unsafe { self.nccl.all_reduce_sum_at(&transfers, elements, part.dtype) },
            Op::AllGather { axis, .. } => {
                // NCCL's all-gather puts the ranks' parts one after another: the gathered axis
                // must be the outermost one longer than 1.
                if part.shape.resolve(b)[..axis].iter().product::<usize>() != 1 {
                    let message = format!("{what}: an all-gather along axis {axis} of {} rows needs a permute that NCCL does not do; run one row at a time", part.shape);
                    return Err(CudaError::Unsupported(message));
                }
                unsafe { self.nccl.all_gather_at(&transfers, elements, part.dtype) }
            }
            ref op => Err(CudaError::Layout(format!("{what}: {} is not an exchange", op.kind()))),
        }
    }

    /// Captures the decode step with grids sized for contexts up to `bucket` on every rank's
    /// stream at once; one graph per device.
    fn capture(&self, bucket: usize) -> Result<Vec<CudaGraph>, CudaError> {
        let b = Bindings { batch: 1, new_tokens: 1, cached_tokens: bucket - 1 };
        let mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let mut capturing = 0;
        let mut result = Ok(());
        for rank in &self.ranks {
            result = check("starting graph capture", rank.gpu.stream.begin_capture(mode));
            if result.is_err() {
                break;
            }
            capturing += 1;
        }
        if result.is_ok() {
            result = self.run(Which::Decode, &b);
        }
        // Every capture that began ends, whatever failed.
        let mut graphs = Vec::with_capacity(capturing);
        for rank in &self.ranks[..capturing] {
            let ended = check("ending graph capture", rank.gpu.stream.end_capture(sys::CUgraphInstantiate_flags(0)));
            match ended {
                Ok(Some(graph)) => graphs.push(graph),
                Ok(None) => result = result.and(Err(CudaError::Unsupported("graph capture recorded nothing".into()))),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result.map(|()| graphs)
    }
}
