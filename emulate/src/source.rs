//! The kernel source as host C++: the few textual changes the emulator makes.

use crate::EmuError;

/// `source` (`prelude` + body, as NVRTC receives it) as the emulator compiles it: the body
/// alone (the emulator puts the prelude and the PTX twins before it), with `extern "C"`
/// removed, each `extern __shared__ TYPE NAME[];` made a pointer to the emulator's dynamic
/// shared memory, and `__shared__ alignas(N)` written `alignas(N) __shared__` (C++ wants the
/// alignment before `static`, which `__shared__` becomes).
pub fn emulated_source(name: &str, source: &str, prelude: &str) -> Result<String, EmuError> {
    let error = |why: &str| EmuError::Source { kernel: name.to_string(), why: why.to_string() };
    let body = source.strip_prefix(prelude).ok_or_else(|| error("its source does not start with the prelude"))?;
    let mut out = body.replace("extern \"C\" ", "");
    while let Some(at) = out.find("extern __shared__ ") {
        let end = out[at..].find(';').map(|e| at + e).ok_or_else(|| error("an extern __shared__ without ';'"))?;
        let decl = out[at + "extern __shared__ ".len()..end].trim();
        let decl = decl.strip_suffix("[]").ok_or_else(|| error("an extern __shared__ that is not an unsized array"))?;
        let split =
            decl.rfind(|c: char| c.is_whitespace()).ok_or_else(|| error("an extern __shared__ without a type"))?;
        let (ty, var) = (decl[..split].trim(), decl[split..].trim());
        let ty = ty.split_whitespace().filter(|w| !w.starts_with("alignas")).collect::<Vec<_>>().join(" ");
        out.replace_range(at..=end, &format!("{ty}* const {var} = ({ty}*)smelt_emu_dynamic;"));
    }
    let mut from = 0;
    while let Some(at) = out[from..].find("__shared__ alignas(").map(|i| from + i) {
        let open = at + "__shared__ ".len();
        let close = out[open..].find(')').map(|e| open + e).ok_or_else(|| error("an unclosed alignas"))?;
        let alignas = out[open..=close].to_string();
        out.replace_range(at..=close, &format!("{alignas} __shared__"));
        from = at + alignas.len() + " __shared__".len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_what_host_cxx_needs() {
        let src = "P\nextern \"C\" __global__ void k(float* x) {\n  extern __shared__ alignas(16) uint4 smem[];\n  \
                   __shared__ alignas(16) float a[4], b[4];\n  x[0] = 1;\n}\n";
        let out = emulated_source("k", src, "P\n").unwrap();
        assert_eq!(
            out,
            "__global__ void k(float* x) {\n  uint4* const smem = (uint4*)smelt_emu_dynamic;\n  \
             alignas(16) __shared__ float a[4], b[4];\n  x[0] = 1;\n}\n"
        );
        assert!(emulated_source("k", "Q\n", "P\n").unwrap_err().to_string().contains("kernel k"));
        let bad = emulated_source("k", "P\nextern __shared__ float s[4];", "P\n").unwrap_err();
        assert!(bad.to_string().contains("not an unsized array"), "{bad}");
    }
}
