//! RMSNorm, NormRope (RMSNorm over each head, then NeoX rotary embedding), with or without the
//! append to the paged KV cache, and the plain KV append.
//!
//! One warp per row (a token, or a token's head): no shared memory and no block barriers, the
//! norm's sum is a warp butterfly. Values are rounded to the storage dtype exactly where
//! `ir::eval` rounds them (`eval::fused::{rms_norm, rope}`); products that the reference rounds
//! on their own are written `__fmul_rn` so the compiler cannot contract them into an FMA. The
//! one difference from the reference is the order of the norm's f32 sum (lanes, then a tree).

use smelt_ir::{DType, Dim, Shape, Sym};

use super::{dim_expr, load, storage_type, store, Grid, Kernel, Launch, Params, View, GRID_WAIT};
use crate::expr::f32_literal;
use crate::{Template, PRELUDE};

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
        "const unsigned long long {dst} =\n        \
         (unsigned long long)smelt_cache_row(smelt_row_table(step, t), smelt_row_position(step, t), block_tokens) * {}u + h * {d}u;",
        heads * d
    )
}

/// Statements (each ending in a newline, indented) as the value of a slot on a line of its own.
fn lines(statements: String) -> String {
    match statements.strip_suffix('\n') {
        Some(s) => s.to_string(),
        None => statements,
    }
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

/// The RMSNorm kernel after the prelude: one warp per row (`$ROWS` of them), `$VEC` elements
/// per access; `$XV_LOAD`, `$WV_LOAD` and `$Y_STORE` are one statement per vector word.
const RMSNORM: Template = Template::new("rmsnorm.cu", include_str!("rmsnorm.cu"));

/// RMSNorm over the last axis of `x [rows, d]` (read through `x_view`): operands `x, w [d]`;
/// output `[rows, d]`, contiguous. Two passes over the row (the second hits L1): any `d`.
pub fn rmsnorm(name: &str, rows: Dim, d: usize, dtype: DType, eps: f32, x_view: View) -> Kernel {
    let vec = vector_elems(dtype, 16, &[d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, vec, vec);
    // The store rounds the final product to the dtype.
    let y = rounded(dtype, &format!("{} * inv", load(dtype, "xv.e", "e")));
    let out = format!("{} * {y}", load(dtype, "wv.e", "e"));
    let kernel = RMSNORM.fill(&[
        ("D", &d.to_string()),
        ("VEC", &vec.to_string()),
        ("BLOCK", &(WARPS * 32).to_string()),
        ("NAME", name),
        ("STORAGE", storage_type(dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("ROWS", &dim_expr(rows)),
        ("WARPS", &WARPS.to_string()),
        ("X_ROW", &view_row(x_view, "row")),
        ("WARP_ELEMS", &(32 * vec).to_string()),
        ("XV_DECL", &a.decl("xv")),
        ("XV_LOAD", &lines(a.load("      ", "xv", "x", "xr + j"))),
        ("XV_E", &load(dtype, "xv.e", "e")),
        ("EPS", &f32_literal(eps)),
        ("WV_DECL", &a.decl("wv")),
        ("WV_LOAD", &lines(a.load("      ", "wv", "w", "j"))),
        ("OUT_E", &store(dtype, "xv.e", "e", &out)),
        ("Y_STORE", &lines(a.store("      ", "xv", "y", &format!("(unsigned long long)row * {d}u + j")))),
    ]);
    Kernel {
        name: name.to_string(),
        kind: "rmsnorm",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block: WARPS * 32,
            grid: Grid::Cover { shape: Shape::new([rows]), per_block: WARPS, max: MAX_BLOCKS },
            shared_bytes: 0,
        },
        params: Params::Standard,
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

/// The NormRope kernel after the prelude, with or without the append: `$OUT_PARAMS` are the
/// output's parameters, `$APPEND_SETUP` the statements the cache writer needs first (ending in
/// a newline; none without the append), `$XV_STORE` the store of the finished row `xv`.
const NORM_ROPE: Template = Template::new("norm_rope.cu", include_str!("norm_rope.cu"));

/// The append's first statements: the cache operand goes unused (the cache is written through
/// `cache`), and the step's values `cache_index` reads.
const APPEND_SETUP: &str = "  (void)cache_in;\n  const unsigned int block_tokens = step->block_tokens;\n";

/// Why RMSNorm + RoPE of heads of `d` has no kernel (None: it has one), stated once: one warp
/// per head.
pub fn norm_rope_unsupported(d: usize) -> Option<String> {
    (d % 32 != 0).then(|| format!("head dim {d} (norm_rope needs a multiple of 32: one warp per head)"))
}

fn norm_rope_kernel(name: &str, heads: usize, d: usize, dtype: DType, eps: f32, x_view: View, append: bool) -> Kernel {
    if let Some(why) = norm_rope_unsupported(d) {
        panic!("{name}: no kernel for {why} (check norm_rope_unsupported first)");
    }
    let (st, per_lane, half) = (storage_type(dtype), d / 32, d / 2);
    let vec = vector_elems(dtype, per_lane, &[per_lane, d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, per_lane, vec);
    let normed = rounded(dtype, &format!("{} * {}", load(dtype, "wv.e", "e"), rounded(dtype, "v[e] * inv")));
    let (c, sn) = (rounded(dtype, "cs"), rounded(dtype, "sn"));
    // The store rounds the sum to the dtype.
    let out = format!(
        "{} + {}",
        rounded(dtype, &format!("__fmul_rn(v[e], {c})")),
        rounded(dtype, &format!("__fmul_rn(rot, {sn})"))
    );
    let (output, out_params, setup, xv_store) = if append {
        // The cache operand and the output are one buffer: written through `cache` only.
        let store = format!(
            "    /* Position P + t of the paged cache: its block from the table, then its row. */\n    {}\n{}",
            cache_index("ci", heads, d),
            a.store("    ", "xv", "cache", "ci + j0")
        );
        ("appended to the paged KV cache", format!("const {st}* cache_in,\n    {st}* cache"), APPEND_SETUP, store)
    } else {
        let store = a.store("    ", "xv", "y", &format!("(unsigned long long)row * {d}u + j0"));
        ("contiguous", format!("{st}* __restrict__ y"), "", store)
    };
    let kernel = NORM_ROPE.fill(&[
        ("D", &d.to_string()),
        ("OUTPUT", output),
        ("PER_LANE", &per_lane.to_string()),
        ("LAST", &(per_lane - 1).to_string()),
        ("HALF", &half.to_string()),
        ("BLOCK", &(WARPS * 32).to_string()),
        ("NAME", name),
        ("STORAGE", st),
        ("OUT_PARAMS", &out_params),
        ("GRID_WAIT", GRID_WAIT),
        ("APPEND_SETUP", setup),
        ("HEADS", &heads.to_string()),
        ("WARPS", &WARPS.to_string()),
        ("X_STRIDE", &x_view.row_stride.to_string()),
        ("X_OFFSET", &x_view.offset.to_string()),
        ("XV_DECL", &a.decl("xv")),
        ("XV_LOAD", &lines(a.load("    ", "xv", "x", &format!("{} + h * {d}u + j0", view_row(x_view, "t"))))),
        ("XV_E", &load(dtype, "xv.e", "e")),
        ("EPS", &f32_literal(eps)),
        ("WV_DECL", &a.decl("wv")),
        ("WV_LOAD", &lines(a.load("    ", "wv", "norm_w", "j0"))),
        ("NORMED", &normed),
        ("OUT_E", &store(dtype, "xv.e", "e", &out)),
        ("XV_STORE", &lines(xv_store)),
    ]);
    Kernel {
        name: name.to_string(),
        kind: if append { "norm_rope_kv_append" } else { "norm_rope" },
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block: WARPS * 32,
            grid: Grid::Cover {
                shape: Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(heads)]),
                per_block: WARPS,
                max: MAX_BLOCKS,
            },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}

/// The KV append kernel after the prelude: thread `i` copies `$VEC` elements (`$XV_LOAD`,
/// `$XV_STORE`: one statement per vector word) of token `i / $PER_ROW`.
const KV_APPEND: Template = Template::new("kv_append.cu", include_str!("kv_append.cu"));

/// KvAppend: operands `cache` (paged) and `new [T, heads, d]` (through `x_view`); the output is
/// the cache. A bitwise copy (the cache and the new rows share `dtype`), one vector per thread.
pub fn kv_append(name: &str, heads: usize, d: usize, dtype: DType, x_view: View) -> Kernel {
    let vec = vector_elems(dtype, 16, &[d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, vec, vec);
    let per_row = heads * d / vec;
    let kernel = KV_APPEND.fill(&[
        ("HEADS", &heads.to_string()),
        ("D", &d.to_string()),
        ("VEC", &vec.to_string()),
        ("BLOCK", &COPY_BLOCK.to_string()),
        ("NAME", name),
        ("STORAGE", storage_type(dtype)),
        ("GRID_WAIT", GRID_WAIT),
        ("PER_ROW", &per_row.to_string()),
        ("XV_DECL", &a.decl("xv")),
        ("XV_LOAD", &lines(a.load("    ", "xv", "x", &format!("{} + c", view_row(x_view, "t"))))),
        ("CACHE_INDEX", &cache_index("ci", heads, d)),
        ("XV_STORE", &lines(a.store("    ", "xv", "cache", "ci + j"))),
    ]);
    Kernel {
        name: name.to_string(),
        kind: "kv_append",
        source: format!("{PRELUDE}{kernel}"),
        launch: Launch {
            block: COPY_BLOCK,
            grid: Grid::Cover {
                shape: Shape::new([Dim::Sym(Sym::NewTokens), Dim::Fixed(per_row)]),
                per_block: COPY_BLOCK,
                max: MAX_BLOCKS,
            },
            shared_bytes: 0,
        },
        params: Params::Standard,
    }
}
