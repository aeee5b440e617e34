//! What the collective ops mean: a rank's evaluation hands its value to a [`Collective`],
//! which returns what the whole group computed. [`ThreadGroup`] is the in-process group: one
//! thread per rank, each round of exchange in a fixed (rank) order, so every rank gets the same
//! bits, run after run.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::tensor::Tensor;

use super::movement;

/// The ranks of a tensor-parallel group, as one rank's evaluation sees them.
pub trait Collective: Sync {
    /// The sum of every rank's `value`, in f32 in rank order, rounded once to its dtype.
    fn all_reduce(&self, rank: u32, value: &Tensor) -> Result<Tensor, String>;
    /// Every rank's `value` concatenated along `axis` in rank order.
    fn all_gather(&self, rank: u32, value: &Tensor, axis: usize) -> Result<Tensor, String>;
}

/// `world` ranks on `world` threads of one process. Every rank must take part in every
/// exchange, in the same order; a rank that fails calls [`ThreadGroup::abort`] so that the
/// others stop waiting for it (an exchange then fails instead of hanging).
pub struct ThreadGroup {
    world: usize,
    state: Mutex<Exchange>,
    changed: Condvar,
}

#[derive(Default)]
struct Exchange {
    /// Values handed in for the round being gathered, by rank.
    slots: Vec<Option<Tensor>>,
    /// The gathered round, until every rank has read it.
    round: Option<Arc<Vec<Tensor>>>,
    readers_left: usize,
    failed: Option<String>,
}

impl ThreadGroup {
    pub fn new(world: usize) -> ThreadGroup {
        let state = Exchange { slots: vec![None; world], ..Exchange::default() };
        ThreadGroup { world, state: Mutex::new(state), changed: Condvar::new() }
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Fails every exchange in progress or to come with `why` (a rank failed).
    pub fn abort(&self, why: String) {
        let mut s = self.lock();
        s.failed.get_or_insert(why);
        self.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Exchange> {
        // A rank that panicked while holding the lock left nothing half-written that matters:
        // the exchange is abandoned by `failed` or by the panic itself.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands in `value` as `rank`'s and returns every rank's, in rank order.
    fn exchange(&self, rank: u32, value: &Tensor) -> Result<Arc<Vec<Tensor>>, String> {
        let rank = rank as usize;
        if rank >= self.world {
            return Err(format!("rank {rank} in a group of {}", self.world));
        }
        let mut s = self.lock();
        // The previous round must be read by everyone before this one is gathered.
        while s.failed.is_none() && (s.round.is_some() || s.slots[rank].is_some()) {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &s.failed {
            return Err(format!("another rank failed: {why}"));
        }
        s.slots[rank] = Some(value.clone());
        if s.slots.iter().all(Option::is_some) {
            let values = s.slots.iter_mut().map(|v| v.take().expect("checked")).collect();
            s.round = Some(Arc::new(values));
            s.readers_left = self.world;
            self.changed.notify_all();
        }
        while s.failed.is_none() && s.round.is_none() {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &s.failed {
            return Err(format!("another rank failed: {why}"));
        }
        let round = s.round.clone().expect("checked");
        s.readers_left -= 1;
        if s.readers_left == 0 {
            s.round = None;
            self.changed.notify_all();
        }
        Ok(round)
    }
}

impl Collective for ThreadGroup {
    fn all_reduce(&self, rank: u32, value: &Tensor) -> Result<Tensor, String> {
        sum_in_rank_order(&self.exchange(rank, value)?)
    }

    fn all_gather(&self, rank: u32, value: &Tensor, axis: usize) -> Result<Tensor, String> {
        gather_in_rank_order(&self.exchange(rank, value)?, axis)
    }
}

/// The elementwise sum of `parts` (same dtype and shape), in f32 in order, rounded once.
pub fn sum_in_rank_order(parts: &[Tensor]) -> Result<Tensor, String> {
    let first = parts.first().ok_or("all_reduce over no ranks")?;
    if !first.dtype().is_float() {
        return Err(format!("all_reduce of {}", first.dtype()));
    }
    let mut sum = first.floats().into_owned();
    for (rank, p) in parts.iter().enumerate().skip(1) {
        if p.shape() != first.shape() || p.dtype() != first.dtype() {
            let (a, b) = (format!("{}{:?}", first.dtype(), first.shape()), format!("{}{:?}", p.dtype(), p.shape()));
            return Err(format!("all_reduce: rank 0 has {a}, rank {rank} has {b}"));
        }
        for (s, v) in sum.iter_mut().zip(p.floats().iter()) {
            *s += v;
        }
    }
    Ok(Tensor::from_f32(first.dtype(), first.shape().to_vec(), sum))
}

/// `parts` concatenated along `axis` (every other axis equal).
pub fn gather_in_rank_order(parts: &[Tensor], axis: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("all_gather over no ranks")?;
    let other_axes = |t: &Tensor| -> Vec<usize> {
        t.shape().iter().enumerate().filter(|&(i, _)| i != axis).map(|(_, &d)| d).collect()
    };
    if axis >= first.shape().len() {
        return Err(format!("all_gather along axis {axis} of a rank-{} tensor", first.shape().len()));
    }
    if let Some((rank, p)) =
        parts.iter().enumerate().find(|(_, p)| p.dtype() != first.dtype() || other_axes(p) != other_axes(first))
    {
        return Err(format!("all_gather: rank 0 has {:?}, rank {rank} has {:?}", first.shape(), p.shape()));
    }
    let refs: Vec<&Tensor> = parts.iter().collect();
    Ok(movement::concat(&refs, axis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::{shape, Builder, Graph, Op, Rank};
    use std::collections::HashMap;

    fn each_rank<T: Send>(world: usize, f: impl Fn(u32, &ThreadGroup) -> T + Sync) -> Vec<T> {
        let group = ThreadGroup::new(world);
        let (group, f) = (&group, &f);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..world as u32).map(|r| s.spawn(move || f(r, group))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_rank_gets_the_same_sum_and_the_gather_in_rank_order() {
        let results = each_rank(3, |r, g| {
            let mine = Tensor::from_f32(DType::BF16, vec![1, 2], vec![r as f32, 0.1 * r as f32]);
            let mut out = Vec::new();
            // Several rounds back to back: a fast rank must not join the previous round.
            for round in 0..20 {
                let sum = g.all_reduce(r, &mine).unwrap();
                let all = g.all_gather(r, &mine, 1).unwrap();
                out.push((round, sum.floats().to_vec(), all.floats().to_vec()));
            }
            out
        });
        for per_rank in &results {
            for (_, sum, all) in per_rank {
                assert_eq!(sum, &vec![3.0, DType::BF16.round(DType::BF16.round(0.1) + DType::BF16.round(0.2))]);
                assert_eq!(all.len(), 6);
                assert_eq!(all[4], 2.0);
            }
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_failed_rank_ends_the_others_exchange_instead_of_hanging() {
        let results = each_rank(2, |r, g| {
            if r == 1 {
                g.abort("rank 1: bad input".into());
                return Err("failed".to_string());
            }
            g.all_reduce(r, &Tensor::zeros(DType::F32, vec![2]))
        });
        let e = results[0].as_ref().unwrap_err();
        assert!(e.contains("rank 1: bad input"), "{e}");
    }

    #[test]
    fn mismatched_parts_are_named() {
        let a = Tensor::zeros(DType::F32, vec![2]);
        let b = Tensor::zeros(DType::F32, vec![3]);
        assert!(sum_in_rank_order(&[a.clone(), b.clone()]).unwrap_err().contains("rank 1 has f32[3]"));
        assert!(gather_in_rank_order(&[a, b], 0).is_ok());
    }

    /// `y = x @ w^T` over two ranks, w split by columns, partial products all-reduced.
    fn rank_graph(rank: u32, with_rank: bool) -> Result<Graph, crate::IrError> {
        let mut b = Builder::new();
        let x = b.input("x", DType::F32, shape![2, 2]);
        let w = b.weight(&format!("w{rank}"), DType::F32, shape![3, 2]).unwrap();
        let y = b.matmul("y", x, w).unwrap();
        let y = b.op("sum", Op::AllReduce { world: 2 }, &[y]).unwrap();
        b.output("y", y).unwrap();
        if with_rank {
            b.set_rank(Rank { rank, world: 2 });
        }
        b.finish()
    }

    #[test]
    fn ranks_evaluate_together_and_the_verifier_knows_the_world() {
        assert!(rank_graph(0, false).unwrap_err().to_string().contains("over 2 ranks in a graph of 1"));
        let graphs = [rank_graph(0, true).unwrap(), rank_graph(1, true).unwrap()];
        assert!(crate::print::to_text(&graphs[1], "g").contains("rank 1 of 2"));
        let weights: HashMap<String, Tensor> = [
            ("w0".to_string(), Tensor::from_f32(DType::F32, vec![3, 2], vec![1., 0., 0., 1., 1., 1.])),
            ("w1".to_string(), Tensor::from_f32(DType::F32, vec![3, 2], vec![2., 0., 0., 2., 0., 0.])),
        ]
        .into();
        let x = Tensor::from_f32(DType::F32, vec![2, 2], vec![1., 2., 3., 4.]);
        let alone = crate::eval::eval(&graphs[0], HashMap::from([("x".to_string(), x.clone())]), &weights);
        assert!(alone.unwrap_err().to_string().contains("needs the other 1 ranks"));
        let outs = each_rank(2, |r, g| {
            let inputs = HashMap::from([("x".to_string(), x.clone())]);
            crate::eval::eval_rank(&graphs[r as usize], inputs, &weights, Default::default(), Some(g), &mut || {})
                .unwrap()
        });
        // x @ (w0 + w1)^T.
        assert_eq!(outs[0]["y"].floats().to_vec(), vec![3., 6., 3., 9., 12., 7.]);
        assert_eq!(outs[0]["y"].floats(), outs[1]["y"].floats());
    }
}
