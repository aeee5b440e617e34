//! The standard pipeline, in order. Cleanups run first so fusion sees canonical chains; dead
//! code is removed after every fusion, because the next pattern counts users and a replaced
//! chain still hangs off its inputs until `Dce` drops it.

use crate::canonicalize::Canonicalize;
use crate::cse::Cse;
use crate::dce::Dce;
use crate::pass::{Pass, PassManager};

/// The passes of [`standard`], by name, in order: the cleanups, then each fusion of
/// [`crate::fuse::fusions`] followed by `Dce`.
pub fn standard_passes() -> Vec<Box<dyn Pass>> {
    let mut passes: Vec<Box<dyn Pass>> = vec![Box::new(Canonicalize), Box::new(Cse), Box::new(Dce)];
    for fusion in crate::fuse::fusions() {
        passes.push(fusion);
        passes.push(Box::new(Dce));
    }
    passes
}

pub fn standard() -> PassManager {
    PassManager::new(standard_passes())
}

#[cfg(test)]
mod tests {
    /// The names are a contract: `smelt compile --dump-after NAME` and the `passes/NN-NAME.txt`
    /// dumps use them.
    #[test]
    fn the_pipeline_runs_its_passes_under_their_documented_names_in_order() {
        let names = super::standard().names().into_iter().map(str::to_string).collect::<Vec<_>>();
        let expected = [
            "canonicalize",
            "cse",
            "dce",
            "fuse_horizontal",
            "dce",
            "fuse_rmsnorm",
            "dce",
            "fuse_norm_rope",
            "dce",
            "fuse_norm_prologue",
            "dce",
            "fuse_elementwise",
            "dce",
            "fuse_epilogue",
            "dce",
        ];
        assert_eq!(names, expected);
    }
}
