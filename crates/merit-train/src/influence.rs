//! Gradient influence tables for TracIn (see `merit_attrib::influence`): at
//! each checkpoint of a run with `influence_dims` > 0, every training
//! example's LoRA gradient is projected and saved beside the adapter as
//! `influence.mrt`; an answer's gradient, projected the same way at the same
//! checkpoint, scores the examples.

use candle_core::{DType, Var};
use merit_attrib::{InfluenceTable, Projector};
use merit_lm::Decoder;

use crate::trainer::batch_nll;
use crate::Example;

type CResult<T> = candle_core::Result<T>;

/// The influence table's file in a checkpoint folder.
pub const FILE: &str = "influence.mrt";
/// The projection's seed: fixed, so tables and queries always agree.
pub const SEED: u64 = 0x4D45_5249_5446_4C55;

/// The projected gradient of `ex`'s mean token loss for the adapter
/// variables `vars` (PEFT names), at their current values.
pub fn projected_gradient(
    model: &Decoder,
    vars: &[(String, Var)],
    ex: &Example,
    pad: u32,
    dims: usize,
) -> CResult<Vec<f32>> {
    let projector = Projector { dims, seed: SEED };
    let (nll, targets, _) = batch_nll(model, &[ex], pad)?;
    let grads = (nll / targets.max(1) as f64)?.backward()?;
    let mut out = vec![0f32; dims];
    for (name, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            let values: Vec<f32> = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            projector.add(name, &values, &mut out);
        }
    }
    Ok(out)
}

/// The table of every example in `examples` (dropout off while it runs).
pub fn table(
    model: &Decoder,
    vars: &[(String, Var)],
    examples: &[Example],
    pad: u32,
    dims: usize,
    lr: f64,
) -> CResult<InfluenceTable> {
    model.set_training(false);
    let mut vectors = Vec::with_capacity(examples.len() * dims);
    for ex in examples {
        vectors.extend(projected_gradient(model, vars, ex, pad, dims)?);
    }
    Ok(InfluenceTable {
        projector: Projector { dims, seed: SEED },
        lr: lr as f32,
        rows: examples.iter().map(|e| e.row as u64).collect(),
        vectors,
    })
}
