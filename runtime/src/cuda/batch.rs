//! Batched decode: one step for many sequences. The batch graph has a row per sequence (T =
//! rows): every matmul is one tensor-core GEMM over all rows (at a step of few rows, a GEMV
//! over them: `Variants::gemv_rows`), so each weight is read once per step for the whole batch
//! instead of once per sequence. Attention and the KV writes take
//! each row as a sequence of its own: its position and block table come from per-row arrays
//! that `smelt_step` points to (see the prelude).

use smelt_ir::Bindings;

use super::decoder::{bucket, CudaDecoder, Runner, StepOutput};
use super::device::{check, DeviceBuffer, Gpu};
use super::layout::KvPool;
use super::CudaError;

/// Captured batched steps kept at most (a graph per row count and context bucket in use).
const MAX_BATCH_GRAPHS: usize = 64;

/// One sequence's part of a batched decode step.
#[derive(Clone, Copy, Debug)]
pub struct BatchRow<'a> {
    pub token: u32,
    /// Where `token` goes: the sequence's cached tokens before it.
    pub position: usize,
    /// The sequence's KV blocks in order, covering `position + 1` tokens.
    pub table: &'a [u32],
}

/// The batch graph's runner and its per-row arrays: positions (`u32 [rows]`) and block tables
/// (`u32 [rows, pool blocks]` at most; each step packs them at its longest table's stride).
pub(crate) struct BatchRunner {
    pub(crate) runner: Runner,
    positions: DeviceBuffer,
    tables: DeviceBuffer,
    rows: usize,
}

impl BatchRunner {
    pub(crate) fn new(gpu: &Gpu, runner: Runner, kv: &KvPool) -> Result<BatchRunner, CudaError> {
        let rows = runner.layout.max_new_tokens;
        let positions = gpu.alloc(4 * rows, "the batch's row positions")?;
        let tables = gpu.alloc(4 * rows * kv.shape.blocks, "the batch's block tables")?;
        Ok(BatchRunner { runner, positions, tables, rows })
    }
}

impl CudaDecoder {
    /// Sequences a batched decode step takes at most (0: no batch graph was compiled).
    pub fn batch_rows(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.rows)
    }

    /// One decode step for every row at once; returns each row's greedy next token and, if
    /// `want_logits`, its logits. The single-sequence state (position, table) is untouched.
    pub fn decode_batch(&mut self, rows: &[BatchRow<'_>], want_logits: bool) -> Result<Vec<StepOutput>, CudaError> {
        let capacity = self.capacity();
        let Some(batch) = &mut self.batch else {
            return Err(CudaError::Unsupported("no batch graph was compiled".into()));
        };
        if rows.is_empty() || rows.len() > batch.rows {
            return Err(CudaError::Unsupported(format!(
                "a batched step takes 1 to {} rows, not {}",
                batch.rows,
                rows.len()
            )));
        }
        let bt = self.kv.shape.block_tokens;
        for (i, r) in rows.iter().enumerate() {
            self.kv.check_table(r.table).map_err(|why| CudaError::Layout(format!("row {i}: {why}")))?;
            if r.table.len() * bt < r.position + 1 {
                return Err(CudaError::KvFull { capacity: r.table.len() * bt });
            }
        }
        let stride = rows.iter().map(|r| r.table.len()).max().unwrap_or(1);
        let mut tables = vec![0u32; rows.len() * stride];
        for (i, r) in rows.iter().enumerate() {
            tables[i * stride..i * stride + r.table.len()].copy_from_slice(r.table);
        }
        let ids: Vec<i32> = rows.iter().map(|r| r.token as i32).collect();
        let positions: Vec<i32> = rows.iter().map(|r| r.position as i32).collect();
        let max_position = rows.iter().map(|r| r.position).max().unwrap_or(0);
        let (gpu, runner) = (&self.gpu, &mut batch.runner);
        gpu.upload(runner.token_ids, &ids, "writing the batch's token ids")?;
        // RoPE reads the positions input (i32); attention and the KV writes read the row
        // positions (u32): the same values.
        gpu.upload(runner.positions, &positions, "writing the batch's positions")?;
        gpu.upload(batch.positions.ptr(), &positions, "writing the batch's row positions")?;
        gpu.upload(batch.tables.ptr(), &tables, "writing the batch's block tables")?;
        runner.layout.write_rows_step(
            gpu,
            rows.len(),
            max_position,
            batch.positions.ptr(),
            batch.tables.ptr(),
            stride,
        )?;
        let what = format!("running a batched decode step of {} rows", rows.len());
        if self.cuda_graphs {
            // One graph per (rows, context bucket), as many as the steps need: at most
            // MAX_BATCH_GRAPHS kept, all dropped when a new one would pass that.
            let key = (rows.len(), bucket(max_position + 1, capacity));
            if runner.graphs.len() >= MAX_BATCH_GRAPHS && !runner.graphs.contains_key(&key) {
                runner.graphs.clear();
            }
            check(&what, runner.captured(gpu, key, self.pdl)?.launch())?;
        } else {
            let b = Bindings { batch: 1, new_tokens: rows.len(), cached_tokens: max_position };
            for l in 0..runner.layout.launches.len() {
                runner.launch(gpu, l, &b, self.pdl)?;
            }
        }
        let mut next = vec![0i32; rows.len()];
        gpu.download(&mut next, runner.next_token, &what)?;
        let mut out = Vec::with_capacity(rows.len());
        for (&t, row) in next.iter().zip(rows) {
            // -1: the greedy kernel saw non-finite logits in this row.
            let next_token = u32::try_from(t).map_err(|_| CudaError::NonFiniteLogits { position: row.position })?;
            out.push(StepOutput { next_token, logits: None });
        }
        if want_logits {
            let vocab = runner.logits.1;
            let mut all = vec![0f32; rows.len() * vocab];
            gpu.download(&mut all, runner.logits.0, "reading the batch's logits")?;
            for (o, row) in out.iter_mut().zip(all.chunks(vocab)) {
                o.logits = Some(row.to_vec());
            }
        }
        Ok(out)
    }
}
