//! The standard pipeline, in order. Cleanups run first so fusion sees canonical chains; dead
//! code is removed after every fusion, because the next pattern counts users and a replaced
//! chain still hangs off its inputs until `Dce` drops it.

use crate::canonicalize::Canonicalize;
use crate::cse::Cse;
use crate::dce::Dce;
use crate::fuse::{FuseElementwise, FuseEpilogue, FuseHorizontal, FuseNormPrologue, FuseNormRope, FuseRmsNorm};
use crate::pass::{Pass, PassManager};

/// The passes of [`standard`], by name, in order.
pub fn standard_passes() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(Canonicalize),
        Box::new(Cse),
        Box::new(Dce),
        Box::new(FuseHorizontal),
        Box::new(Dce),
        Box::new(FuseRmsNorm),
        Box::new(Dce),
        Box::new(FuseNormRope),
        Box::new(Dce),
        Box::new(FuseNormPrologue),
        Box::new(Dce),
        Box::new(FuseElementwise),
        Box::new(Dce),
        Box::new(FuseEpilogue),
        Box::new(Dce),
    ]
}

pub fn standard() -> PassManager {
    PassManager::new(standard_passes())
}
