//! Horizontal fusion: matmuls that read the same activation against different weights (q/k/v;
//! gate/up) become one matmul against the weights concatenated along N, and each original
//! result becomes a slice of it. The runtime concatenates the weights when it loads them: a
//! weight named `a+b+c` is the concatenation of checkpoint tensors `a`, `b`, `c` along axis 0.

use std::collections::BTreeMap;

use smelt_ir::{Bound, Dim, Graph, IrError, Meta, Node, NodeId, Op, Shape, WEIGHT_CONCAT};

use super::{op, topo};
use crate::pass::{Pass, Report};

pub struct FuseHorizontal;

/// `l00.attn.a`, `l00.attn.b` -> `l00.attn.a+b`.
fn joined_name(names: &[Option<String>]) -> Option<String> {
    let names: Vec<&str> = names.iter().map(|n| n.as_deref()).collect::<Option<_>>()?;
    let (scope, _) = names[0].rsplit_once('.').unwrap_or(("", names[0]));
    let lasts: Vec<&str> = names.iter().map(|n| n.rsplit_once('.').map_or(*n, |(_, l)| l)).collect();
    let joined = lasts.join(&WEIGHT_CONCAT.to_string());
    Some(if scope.is_empty() { joined } else { format!("{scope}.{joined}") })
}

/// The merged matmul's metadata: the layer all share, and their labels run together (labels
/// `q`, `k`, `v` name the merged kernel `qkv`).
fn joined_meta(metas: &[Meta]) -> Meta {
    let layer = metas[0].layer.filter(|l| metas.iter().all(|m| m.layer == Some(*l)));
    let labels: Option<Vec<&str>> = metas.iter().map(|m| m.label.as_deref()).collect();
    Meta { layer, label: labels.map(|l| l.concat()), split: None }
}

impl Pass for FuseHorizontal {
    fn name(&self) -> &'static str {
        "fuse_horizontal"
    }

    fn run(&self, g: &mut Graph) -> Result<Report, IrError> {
        let mut report = Report::default();
        // Matmuls against a weight leaf, grouped by their activation operand (in id order).
        let mut groups: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
        for id in topo(g) {
            if *op(g, id) == Op::MatMul {
                let [x, w] = <[NodeId; 2]>::try_from(g.operands(id)).expect("matmul has 2 operands");
                if matches!(op(g, w), Op::Weight { .. }) {
                    groups.entry(x).or_default().push(id);
                }
            }
        }
        for (x, mut mms) in groups {
            mms.sort();
            if mms.len() < 2 {
                continue;
            }
            let weights: Vec<NodeId> = mms.iter().map(|&m| g.operands(m)[1]).collect();
            let names: Vec<String> = weights
                .iter()
                .map(|&w| match op(g, w) {
                    Op::Weight { name } => name.clone(),
                    _ => unreachable!("grouped by weight operand"),
                })
                .collect();
            let w0 = g.node(weights[0]).clone();
            let widths: Vec<usize> = weights.iter().map(|&w| g.node(w).shape.dims()[0].fixed().unwrap_or(0)).collect();
            let total: usize = widths.iter().sum();
            let wshape = Shape(vec![Dim::Fixed(total), w0.shape.dims()[1]]);
            let joined = names.join(&WEIGHT_CONCAT.to_string());
            let wcat = g.add_node(
                Node {
                    op: Op::Weight { name: joined.clone() },
                    dtype: w0.dtype,
                    shape: wshape,
                    name: Some(joined),
                    meta: Meta::default(),
                },
                &[],
            );
            let m0 = g.node(mms[0]).clone();
            let mut out_dims = m0.shape.dims().to_vec();
            *out_dims.last_mut().expect("matmul rank >= 2") = Dim::Fixed(total);
            let mm_names: Vec<Option<String>> = mms.iter().map(|&m| g.node(m).name.clone()).collect();
            let metas: Vec<Meta> = mms.iter().map(|&m| g.node(m).meta.clone()).collect();
            let name = joined_name(&mm_names);
            let node =
                Node { op: Op::MatMul, dtype: m0.dtype, shape: Shape(out_dims), name, meta: joined_meta(&metas) };
            let fused = g.add_node(node, &[x, wcat]);
            let axis = m0.shape.rank() - 1;
            let mut offset = 0;
            for (&m, width) in mms.iter().zip(&widths) {
                let old = g.node(m).clone();
                let slice = Op::Slice { axis, start: Bound::FromStart(offset), end: Bound::FromStart(offset + width) };
                let s = g.add_node(Node { op: slice, ..old }, &[fused]);
                g.replace_all_uses(m, s);
                offset += width;
            }
            report.matched += 1;
            report.changed += mms.len();
        }
        report
            .note(format!("{} groups of matmuls sharing an input, {} matmuls merged", report.matched, report.changed));
        Ok(report)
    }
}
