//! RMSNorm, NormRope (RMSNorm over each head, then NeoX rotary embedding), with or without the
//! append to the paged KV cache, and the plain KV append.
//!
//! One warp per row (a token, or a token's head): no shared memory and no block barriers, the
//! norm's sum is a warp butterfly. Values are rounded to the storage dtype exactly where
//! `ir::eval` rounds them (`eval::fused::{rms_norm, rope}`); products that the reference rounds
//! on their own are written `__fmul_rn` so the compiler cannot contract them into an FMA. The
//! one difference from the reference is the order of the norm's f32 sum (lanes, then a tree).

use std::fmt::Write;

use smelt_ir::{DType, Dim, Shape, Sym};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, View};
use crate::expr::f32_literal;
use crate::PRELUDE;

/// Warps (rows) per block of the warp-per-row kernels.
const WARPS: u32 = 4;
/// Threads per block of the KV append copy.
const COPY_BLOCK: u32 = 256;
/// Grid-stride loops cover the rest: no launch needs more blocks than this.
const MAX_BLOCKS: u32 = 65535;

/// `x` stored in `dtype` and read back (a no-op for f32).
fn rounded(dtype: DType, x: &str) -> String {
    match dtype {
        DType::BF16 => format!("smelt_round_bf16({x})"),
        DType::F16 => format!("smelt_round_f16({x})"),
        _ => x.to_string(),
    }
}

/// Elements per vector access: the most (a power of two, at most `max`, at most 16 bytes) such
/// that every count in `multiples_of` (offsets, strides, widths, in elements) is a multiple of
/// it, so all accesses stay aligned given 16-byte-aligned buffers.
pub(crate) fn vector_elems(dtype: DType, max: usize, multiples_of: &[usize]) -> usize {
    let mut n = 16 / dtype.size_bytes();
    while n > 1 && (n > max || multiples_of.iter().any(|m| m % n != 0)) {
        n /= 2;
    }
    n
}

/// The C type of an aligned `bytes`-wide access.
pub(crate) fn word_type(bytes: usize) -> &'static str {
    match bytes {
        2 => "unsigned short",
        4 => "unsigned int",
        8 => "uint2",
        16 => "uint4",
        b => panic!("no {b}-byte vector type"),
    }
}

/// `n` consecutive elements of `dtype` moved as vector words of `vec` elements each, through a
/// union so the 16-bit halves need no shifts and stay in registers.
pub(crate) struct Access {
    dtype: DType,
    n: usize,
    words: usize,
    word: &'static str,
}

impl Access {
    pub(crate) fn new(dtype: DType, n: usize, vec: usize) -> Access {
        assert!(vec > 0 && n % vec == 0, "{n} elements do not split into vectors of {vec}");
        Access { dtype, n, words: n / vec, word: word_type(vec * dtype.size_bytes()) }
    }

    /// Declares the union `var`: words `var.w[..]`, elements `var.e[..]`.
    pub(crate) fn decl(&self, var: &str) -> String {
        let (word, words, st, n) = (self.word, self.words, storage_type(self.dtype), self.n);
        format!("union {{ {word} w[{words}]; {st} e[{n}]; }} {var};")
    }

    /// One statement per word (there are few), indented by `ind`.
    fn words(&self, ind: &str, stmt: impl Fn(usize) -> String) -> String {
        (0..self.words).map(|k| format!("{ind}{};\n", stmt(k))).collect()
    }

    /// Loads `ptr[index .. index + n]` into `var`.
    pub(crate) fn load(&self, ind: &str, var: &str, ptr: &str, index: &str) -> String {
        self.words(ind, |k| format!("{var}.w[{k}] = ((const {}*)({ptr} + {index}))[{k}]", self.word))
    }

    /// Stores `var` to `ptr[index .. index + n]`.
    pub(crate) fn store(&self, ind: &str, var: &str, ptr: &str, index: &str) -> String {
        self.words(ind, |k| format!("(({}*)({ptr} + {index}))[{k}] = {var}.w[{k}]", self.word))
    }
}

/// C statements setting `dst` to the physical element index of head `h`'s row at token `t`'s
/// position (`P + t`, or `row_positions[t]` in a batched step) in a paged cache
/// `[blocks, block_tokens, heads, d]`.
fn cache_index(dst: &str, heads: usize, d: usize) -> String {
    format!(
        "const unsigned int p = smelt_row_position(step, t), blk = smelt_row_table(step, t)[p / block_tokens];\n    \
         const unsigned long long {dst} = ((unsigned long long)blk * block_tokens + p % block_tokens) * {}u + h * {d}u;",
        heads * d
    )
}

/// The step's values the cache writers use.
const CACHE_STEP: &str = "  const unsigned int block_tokens = step->block_tokens;\n";

/// The warp-per-row loop header: `row` runs over `rows` (a C expression), `lane` is the lane.
fn warp_rows(s: &mut String, rows: &str) {
    let _ = writeln!(s, "  const unsigned int lane = threadIdx.x & 31u, rows = {rows};");
    let _ = writeln!(
        s,
        "  for (unsigned int row = blockIdx.x * {WARPS}u + (threadIdx.x >> 5); row < rows; row += gridDim.x * {WARPS}u) {{"
    );
}

/// The element index where row `r` of `view` starts.
fn view_row(view: View, r: &str) -> String {
    let row = if view.from_last_row {
        format!("((unsigned long long)step->new_tokens - 1u + {r}) * {}u", view.row_stride)
    } else {
        format!("(unsigned long long){r} * {}u", view.row_stride)
    };
    if view.offset == 0 {
        row
    } else {
        format!("{}u + {row}", view.offset)
    }
}

fn params(list: &[String]) -> String {
    list.join(",\n    ")
}

/// RMSNorm over the last axis of `x [rows, d]` (read through `x_view`): operands `x, w [d]`;
/// output `[rows, d]`, contiguous. Two passes over the row (the second hits L1): any `d`.
pub fn rmsnorm(name: &str, rows: Dim, d: usize, dtype: DType, eps: f32, x_view: View) -> Kernel {
    let st = storage_type(dtype);
    let vec = vector_elems(dtype, 16, &[d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, vec, vec);
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "/* RMSNorm over rows of {d}, one warp per row, {vec} elements per access. */");
    let _ = writeln!(s, "extern \"C\" __global__ void __launch_bounds__({}) {name}(", WARPS * 32);
    let p = [
        format!("const {st}* __restrict__ x"),
        format!("const {st}* __restrict__ w"),
        format!("{st}* __restrict__ y"),
        "const smelt_step* __restrict__ step".into(),
    ];
    let _ = writeln!(s, "    {}) {{", params(&p));
    warp_rows(&mut s, &dim_expr(rows));
    let _ = writeln!(s, "    const unsigned long long xr = {};", view_row(x_view, "row"));
    let _ = writeln!(s, "    /* Sum of squares in f32, each square rounded on its own (no FMA), as eval does. */");
    let _ = writeln!(s, "    float ss = 0.0f;");
    let _ = writeln!(s, "    for (unsigned int j = lane * {vec}u; j < {d}u; j += {}u) {{", 32 * vec);
    let _ = write!(s, "      {}\n{}", a.decl("xv"), a.load("      ", "xv", "x", "xr + j"));
    let _ = writeln!(
        s,
        "#pragma unroll\n      for (int e = 0; e < {vec}; ++e) {{ const float v = {}; ss += __fmul_rn(v, v); }}",
        load(dtype, "xv.e", "e")
    );
    s.push_str("    }\n");
    s.push_str("    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);\n");
    let _ = writeln!(
        s,
        "    const float inv = 1.0f / sqrtf(__fadd_rn(ss / {d}.0f, {}));  /* mean + eps: no FMA either */",
        f32_literal(eps)
    );
    let _ = writeln!(s, "    /* y = round(x * inv), out = round(w * y): the cast back, then the weight. */");
    let _ = writeln!(s, "    for (unsigned int j = lane * {vec}u; j < {d}u; j += {}u) {{", 32 * vec);
    let _ = writeln!(s, "      {}\n      {}", a.decl("xv"), a.decl("wv"));
    s.push_str(&a.load("      ", "xv", "x", "xr + j"));
    s.push_str(&a.load("      ", "wv", "w", "j"));
    // The store rounds the final product to the dtype.
    let y = rounded(dtype, &format!("{} * inv", load(dtype, "xv.e", "e")));
    let out = format!("{} * {y}", load(dtype, "wv.e", "e"));
    let _ = writeln!(s, "#pragma unroll\n      for (int e = 0; e < {vec}; ++e) {}", store(dtype, "xv.e", "e", &out));
    s.push_str(&a.store("      ", "xv", "y", &format!("(unsigned long long)row * {d}u + j")));
    s.push_str("    }\n  }\n}\n");
    Kernel {
        name: name.to_string(),
        kind: "rmsnorm",
        source: super::wait_at_entry(s),
        launch: Launch {
            block: WARPS * 32,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: WARPS, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
    }
}

/// NormRope without the append: operands `x [T, heads, d]` (through `x_view`: token `t`, head
/// `h`, element `j` at `offset + t * row_stride + h * d + j`), `norm_w [d]`, `positions i32 [T]`,
/// `inv_freq f32 [d/2]`; output `[T, heads, d]`, contiguous.
pub fn norm_rope(name: &str, heads: usize, d: usize, dtype: DType, eps: f32, x_view: View) -> Kernel {
    norm_rope_kernel(name, heads, d, dtype, eps, x_view, false)
}

/// NormRope with the append: the operands of [`norm_rope`] then the paged cache; the output is
/// the same cache, its rows at logical positions `P .. P+T` written through the block table.
pub fn norm_rope_kv_append(name: &str, heads: usize, d: usize, dtype: DType, eps: f32, x_view: View) -> Kernel {
    norm_rope_kernel(name, heads, d, dtype, eps, x_view, true)
}

fn norm_rope_kernel(name: &str, heads: usize, d: usize, dtype: DType, eps: f32, x_view: View, append: bool) -> Kernel {
    assert!(d % 32 == 0, "norm_rope needs a head dim that is a multiple of 32 (one warp per head), not {d}");
    let (st, per_lane, half) = (storage_type(dtype), d / 32, d / 2);
    let vec = vector_elems(dtype, per_lane, &[per_lane, d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, per_lane, vec);
    let mut s = String::from(PRELUDE);
    let what = if append { "appended to the paged KV cache" } else { "contiguous" };
    let _ = writeln!(
        s,
        "/* RMSNorm over each head's {d} dims, then NeoX rotary embedding; output {what}.\n   \
         One warp per (token, head); lane l holds elements {per_lane}l..{per_lane}l+{}, so the rotate-half\n   \
         partner of each element (j +- {half}) sits at the same slot of lane l ^ 16. */",
        per_lane - 1
    );
    let _ = writeln!(s, "extern \"C\" __global__ void __launch_bounds__({}) {name}(", WARPS * 32);
    let mut p = vec![
        format!("const {st}* __restrict__ x"),
        format!("const {st}* __restrict__ norm_w"),
        "const int* __restrict__ positions".into(),
        "const float* __restrict__ inv_freq".into(),
    ];
    if append {
        // The cache operand and the output are one buffer: written through `cache` only.
        p.push(format!("const {st}* cache_in"));
        p.push(format!("{st}* cache"));
    } else {
        p.push(format!("{st}* __restrict__ y"));
    }
    p.push("const smelt_step* __restrict__ step".into());
    let _ = writeln!(s, "    {}) {{", params(&p));
    if append {
        s.push_str("  (void)cache_in;\n");
        s.push_str(CACHE_STEP);
    }
    warp_rows(&mut s, &format!("step->new_tokens * {heads}u"));
    let _ = writeln!(s, "    const unsigned int t = row / {heads}u, h = row % {heads}u, j0 = lane * {per_lane}u;");
    let _ =
        writeln!(s, "    /* x is a view: token rows {} apart from element {}. */", x_view.row_stride, x_view.offset);
    let _ = writeln!(s, "    {}", a.decl("xv"));
    let xi = format!("{} + h * {d}u + j0", view_row(x_view, "t"));
    s.push_str(&a.load("    ", "xv", "x", &xi));
    let _ = writeln!(s, "    float v[{per_lane}];");
    let _ =
        writeln!(s, "#pragma unroll\n    for (int e = 0; e < {per_lane}; ++e) v[e] = {};", load(dtype, "xv.e", "e"));
    s.push_str("    /* RMSNorm as eval: squares rounded on their own (no FMA), summed in f32; every lane\n       ends with the same sum (f32 addition commutes exactly). */\n");
    let _ = writeln!(s, "    float ss = 0.0f;");
    let _ = writeln!(s, "#pragma unroll\n    for (int e = 0; e < {per_lane}; ++e) ss += __fmul_rn(v[e], v[e]);");
    s.push_str("    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);\n");
    let _ = writeln!(
        s,
        "    const float inv = 1.0f / sqrtf(__fadd_rn(ss / {d}.0f, {}));  /* mean + eps: no FMA either */",
        f32_literal(eps)
    );
    let _ = writeln!(s, "    {}", a.decl("wv"));
    s.push_str(&a.load("    ", "wv", "norm_w", "j0"));
    let normed = rounded(dtype, &format!("{} * {}", load(dtype, "wv.e", "e"), rounded(dtype, "v[e] * inv")));
    let _ = writeln!(s, "#pragma unroll\n    for (int e = 0; e < {per_lane}; ++e) v[e] = {normed};");
    s.push_str(concat!(
        "    /* Rotary embedding: cos/sin of pos * inv_freq[j % (d/2)] in f32, rounded to the dtype;\n",
        "       rot = concat(-x[d/2:], x[:d/2]): lanes 0-15 hold the first half and take their\n",
        "       partner negated. out = round(round(x * cos) + round(rot * sin)), the store rounding\n",
        "       the sum. */\n"
    ));
    let _ = writeln!(s, "    const float pos = (float)positions[t];");
    let _ = writeln!(s, "#pragma unroll\n    for (int e = 0; e < {per_lane}; ++e) {{");
    s.push_str("      const float partner = __shfl_xor_sync(0xffffffffu, v[e], 16);\n");
    s.push_str("      const float rot = lane < 16u ? -partner : partner;\n");
    let _ = writeln!(s, "      float sn, cs;\n      sincosf(__fmul_rn(pos, inv_freq[j0 % {half}u + e]), &sn, &cs);");
    let (c, sn) = (rounded(dtype, "cs"), rounded(dtype, "sn"));
    // The store rounds the sum to the dtype.
    let out = format!(
        "{} + {}",
        rounded(dtype, &format!("__fmul_rn(v[e], {c})")),
        rounded(dtype, &format!("__fmul_rn(rot, {sn})"))
    );
    let _ = writeln!(s, "      {}\n    }}", store(dtype, "xv.e", "e", &out));
    if append {
        s.push_str("    /* Position P + t of the paged cache: its block from the table, then its row. */\n");
        let _ = writeln!(s, "    {}", cache_index("ci", heads, d));
        s.push_str(&a.store("    ", "xv", "cache", "ci + j0"));
    } else {
        s.push_str(&a.store("    ", "xv", "y", &format!("(unsigned long long)row * {d}u + j0")));
    }
    s.push_str("  }\n}\n");
    Kernel {
        name: name.to_string(),
        kind: if append { "norm_rope_kv_append" } else { "norm_rope" },
        source: super::wait_at_entry(s),
        launch: Launch {
            block: WARPS * 32,
            grid: Grid::Cover {
                shape: Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(heads)]),
                per_block: WARPS,
                max: MAX_BLOCKS,
            },
            shared_bytes: 0,
        },
    }
}

/// KvAppend: operands `cache` (paged) and `new [T, heads, d]` (through `x_view`); the output is
/// the cache. A bitwise copy (the cache and the new rows share `dtype`), one vector per thread.
pub fn kv_append(name: &str, heads: usize, d: usize, dtype: DType, x_view: View) -> Kernel {
    let st = storage_type(dtype);
    let vec = vector_elems(dtype, 16, &[d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, vec, vec);
    let per_row = heads * d / vec;
    let mut s = String::from(PRELUDE);
    let _ = writeln!(s, "/* Appends T rows of {heads} heads x {d} to the paged cache, {vec} elements per thread. */");
    let _ = writeln!(s, "extern \"C\" __global__ void __launch_bounds__({COPY_BLOCK}) {name}(");
    let p = [
        format!("const {st}* cache_in"),
        format!("const {st}* __restrict__ x"),
        format!("{st}* cache"),
        "const smelt_step* __restrict__ step".into(),
    ];
    let _ = writeln!(s, "    {}) {{", params(&p));
    s.push_str("  (void)cache_in;\n");
    s.push_str(CACHE_STEP);
    let _ = writeln!(s, "  const unsigned int n = step->new_tokens * {per_row}u;");
    s.push_str(
        "  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {\n",
    );
    let _ = writeln!(
        s,
        "    const unsigned int t = i / {per_row}u, c = i % {per_row}u * {vec}u, h = c / {d}u, j = c % {d}u;"
    );
    let _ = writeln!(s, "    {}", a.decl("xv"));
    let xi = format!("{} + c", view_row(x_view, "t"));
    s.push_str(&a.load("    ", "xv", "x", &xi));
    let _ = writeln!(s, "    {}", cache_index("ci", heads, d));
    s.push_str(&a.store("    ", "xv", "cache", "ci + j"));
    s.push_str("  }\n}\n");
    Kernel {
        name: name.to_string(),
        kind: "kv_append",
        source: super::wait_at_entry(s),
        launch: Launch {
            block: COPY_BLOCK,
            grid: Grid::Cover {
                shape: Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(per_row)]),
                per_block: COPY_BLOCK,
                max: MAX_BLOCKS,
            },
            shared_bytes: 0,
        },
    }
}
