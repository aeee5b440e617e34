//! The kernel source as host C++: the few textual changes the emulator makes.

use std::fmt::Write as _;

use crate::EmuError;

/// `source` (`prelude` + body, as NVRTC receives it) as the emulator compiles it: the body
/// alone (the emulator puts the prelude and the PTX twins before it), with `extern "C"`
/// removed, each `extern __shared__ TYPE NAME[];` made a pointer to the emulator's dynamic
/// shared memory, and each static `__shared__` array made one per block group
/// (`per_group_shared`).
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
        out.replace_range(at..=end, &format!("{ty}* const {var} = ({ty}*)smelt_emu_self()->dynamic;"));
    }
    per_group_shared(&mut out, &error)?;
    Ok(out)
}

/// Each static `__shared__ [alignas(N)] TYPE a[..], b[..];` as one array per block group
/// (`SMELT_EMU_GROUPS`: under ThreadSanitizer several blocks run at once, each with shared
/// memory of its own) and a reference by the old name to the running group's, on the same
/// line (reports keep the kernel's line numbers). The alignment goes before `static`, which
/// `__shared__` becomes.
fn per_group_shared(out: &mut String, error: &dyn Fn(&str) -> EmuError) -> Result<(), EmuError> {
    const KEY: &str = "__shared__ ";
    let mut from = 0;
    while let Some(at) = out[from..].find(KEY).map(|i| from + i) {
        let end = out[at..].find(';').map(|e| at + e).ok_or_else(|| error("a __shared__ without ';'"))?;
        let mut decl = out[at + KEY.len()..end].trim();
        let mut align = String::new();
        if let Some(rest) = decl.strip_prefix("alignas(") {
            let close = rest.find(')').ok_or_else(|| error("an unclosed alignas"))?;
            align = format!("alignas({}) ", &rest[..close]);
            decl = rest[close + 1..].trim();
        }
        let mut ty = "";
        let mut rewritten = String::new();
        for (i, d) in split_top_level(decl).into_iter().enumerate() {
            let d = d.trim();
            let dims_at = d.find('[').unwrap_or(d.len());
            let head = d[..dims_at].trim_end();
            let name_at = head.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
            if i == 0 {
                ty = head[..name_at].trim();
                if ty.is_empty() {
                    return Err(error("a __shared__ without a type"));
                }
            } else if name_at != 0 {
                return Err(error("a __shared__ declarator that is not a name"));
            }
            let (name, dims) = (&head[name_at..], &d[dims_at..]);
            if name.is_empty() {
                return Err(error("a __shared__ without a name"));
            }
            let _ = write!(
                rewritten,
                "{align}static {ty} smelt_emu_shared_{name}[SMELT_EMU_GROUPS]{dims}; \
                 auto& {name} = smelt_emu_shared_{name}[smelt_emu_self()->group];"
            );
        }
        out.replace_range(at..=end, &rewritten);
        from = at + rewritten.len();
    }
    Ok(())
}

/// `s` split at commas outside brackets.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_what_host_cxx_needs() {
        let src = "P\nextern \"C\" __global__ void k(float* x) {\n  extern __shared__ alignas(16) uint4 smem[];\n  \
                   __shared__ alignas(16) float a[4], b[4];\n  __shared__ float s[2][1 << 3];\n  x[0] = 1;\n}\n";
        let out = emulated_source("k", src, "P\n").unwrap();
        let group = |align: &str, ty: &str, name: &str, dims: &str| {
            format!(
                "{align}static {ty} smelt_emu_shared_{name}[SMELT_EMU_GROUPS]{dims}; \
                 auto& {name} = smelt_emu_shared_{name}[smelt_emu_self()->group];"
            )
        };
        let (a, b) = (group("alignas(16) ", "float", "a", "[4]"), group("alignas(16) ", "float", "b", "[4]"));
        let s = group("", "float", "s", "[2][1 << 3]");
        // Line for line: the reports' line numbers stay the kernel's.
        assert_eq!(
            out,
            format!(
                "__global__ void k(float* x) {{\n  uint4* const smem = (uint4*)smelt_emu_self()->dynamic;\n  \
                 {a}{b}\n  {s}\n  x[0] = 1;\n}}\n"
            )
        );
        assert!(emulated_source("k", "Q\n", "P\n").unwrap_err().to_string().contains("kernel k"));
        let bad = emulated_source("k", "P\nextern __shared__ float s[4];", "P\n").unwrap_err();
        assert!(bad.to_string().contains("not an unsized array"), "{bad}");
        let bad = emulated_source("k", "P\n__shared__ float[4];", "P\n").unwrap_err();
        assert!(bad.to_string().contains("without a type"), "{bad}");
    }
}
