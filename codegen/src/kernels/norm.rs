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
        "const unsigned long long {dst} =\n      \
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
    head_rows(name, d, dtype, &[HeadPart::NormRope { heads, eps, x_view, append: false }])
}

/// NormRope with the append: the operands of [`norm_rope`] then the paged cache; the output is
/// the same cache, its rows at logical positions `P .. P+T` written through the block table.
pub fn norm_rope_kv_append(name: &str, heads: usize, d: usize, dtype: DType, eps: f32, x_view: View) -> Kernel {
    head_rows(name, d, dtype, &[HeadPart::NormRope { heads, eps, x_view, append: true }])
}

/// What a [`head_rows`] kernel does to the heads of one part, each head of `d` elements of each
/// new token (one warp each). Its parameters are its node's operands then its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HeadPart {
    /// NormRope, with or without the append: the parameters of [`norm_rope`] or
    /// [`norm_rope_kv_append`].
    NormRope { heads: usize, eps: f32, x_view: View, append: bool },
    /// KvAppend: the parameters of [`kv_append`] (the cache, then `x` through `x_view`), as a
    /// warp per head.
    Append { heads: usize, x_view: View },
}

impl HeadPart {
    fn heads(&self) -> usize {
        match *self {
            HeadPart::NormRope { heads, .. } | HeadPart::Append { heads, .. } => heads,
        }
    }

    /// The part function's parameters before `step`: (C type, name).
    fn params(&self, st: &str) -> Vec<(String, &'static str)> {
        let restrict = |ty: &str| format!("{ty}* __restrict__");
        match self {
            HeadPart::NormRope { append, .. } => {
                let mut p = vec![
                    (restrict(&format!("const {st}")), "x"),
                    (restrict(&format!("const {st}")), "norm_w"),
                    (restrict("const int"), "positions"),
                    (restrict("const float"), "inv_freq"),
                ];
                if *append {
                    p.extend([(format!("const {st}*"), "cache_in"), (format!("{st}*"), "cache")]);
                } else {
                    p.push((restrict(st), "y"));
                }
                p
            }
            HeadPart::Append { .. } => {
                vec![
                    (format!("const {st}*"), "cache_in"),
                    (restrict(&format!("const {st}")), "x"),
                    (format!("{st}*"), "cache"),
                ]
            }
        }
    }

    /// What the part does, for the kernel's comment.
    fn doc(&self) -> &'static str {
        match self {
            HeadPart::NormRope { append: false, .. } => "RMSNorm + RoPE",
            HeadPart::NormRope { append: true, .. } => "RMSNorm + RoPE appended to the paged KV cache",
            HeadPart::Append { .. } => "appended to the paged KV cache",
        }
    }
}

/// Why a [`head_rows`] kernel has no form for heads of `d` (None: it has one), stated once: one
/// warp per head.
pub fn norm_rope_unsupported(d: usize) -> Option<String> {
    (d % 32 != 0).then(|| format!("head dim {d} (norm_rope needs a multiple of 32: one warp per head)"))
}

/// The head-rows kernel after the prelude: `$PARTS` are the part functions, `$DISPATCH` the
/// call of the part a head belongs to.
const HEAD_ROWS: Template = Template::new("head_rows.cu", include_str!("head_rows.cu"));
/// A NormRope part, with or without the append: `$OUT_PARAMS` are the output's parameters,
/// `$APPEND_SETUP` the statements the cache writer needs first (ending in a newline; none
/// without the append), `$XV_STORE` the store of the finished row `xv`.
const NORM_ROPE: Template = Template::new("norm_rope.cu", include_str!("norm_rope.cu"));
/// The rotary table the norm parts share, computed before the call of the part a head is in.
const ROPE_TABLE: Template = Template::new("rope_table.cu", include_str!("rope_table.cu"));
/// An Append part: the head's row copied as it is.
const HEAD_APPEND: Template = Template::new("head_append.cu", include_str!("head_append.cu"));

/// The append's first statements: the cache operand goes unused (the cache is written through
/// `cache`), and the step's values `cache_index` reads.
const APPEND_SETUP: &str = "  (void)cache_in;\n  const unsigned int block_tokens = step->block_tokens;\n";

/// One kernel over the heads of several parts of each new token, a warp per (token, head):
/// head `h` of a token is the part whose heads it falls in, in `parts` order. The parts are
/// independent (each reads its own operands, writes its own output), so nodes that read one
/// row (the q, k and v heads of the fused projection) run as one launch instead of one each.
/// Parameters: each part's ([`HeadPart`]), in order, then `step`.
pub fn head_rows(name: &str, d: usize, dtype: DType, parts: &[HeadPart]) -> Kernel {
    if let Some(why) = norm_rope_unsupported(d) {
        panic!("{name}: no kernel for {why} (check norm_rope_unsupported first)");
    }
    assert!(!parts.is_empty(), "{name}: a head-rows kernel of no parts");
    let st = storage_type(dtype);
    let heads: usize = parts.iter().map(HeadPart::heads).sum();
    let (mut functions, mut params, mut docs) = (Vec::new(), Vec::new(), Vec::new());
    // Each part's call, and its first head past its own.
    let (mut norm_calls, mut append_calls) = (Vec::new(), Vec::new());
    let mut first = 0;
    for (i, part) in parts.iter().enumerate() {
        let function = format!("{name}_part{i}");
        let names: Vec<(String, &str)> = part.params(st);
        params.extend(names.iter().map(|(ty, p)| format!("    {ty} p{i}_{p},")));
        // The rotary table's operands are the kernel's, not the part's.
        let args: Vec<String> = names
            .iter()
            .filter(|(_, p)| !matches!(*p, "positions" | "inv_freq"))
            .map(|(_, p)| format!("p{i}_{p}"))
            .collect();
        let h = if first == 0 { "h".to_string() } else { format!("h - {first}u") };
        let last = first + part.heads();
        docs.push(format!("heads {first}-{} {}", last - 1, part.doc()));
        functions.push(part_function(&function, d, dtype, part));
        match part {
            HeadPart::NormRope { .. } => {
                norm_calls.push((format!("{function}({}, step, t, {h}, lane, sn, cs);", args.join(", ")), last, i))
            }
            HeadPart::Append { .. } => {
                append_calls.push((format!("{function}({}, step, t, {h}, lane);", args.join(", ")), last, i))
            }
        }
        first = last;
    }
    assert!(
        parts.iter().position(|p| matches!(p, HeadPart::Append { .. })).is_none_or(|a| a >= norm_calls.len()),
        "{name}: the norm parts come first (their heads share the rotary table)"
    );
    let mut dispatch = String::new();
    if let Some(&(_, norm_heads, _)) = norm_calls.last() {
        let pick = |param: &str| {
            let mut expr = format!("p{}_{param}", norm_calls[norm_calls.len() - 1].2);
            for (_, last, i) in norm_calls.iter().rev().skip(1) {
                expr = format!("h < {last}u ? p{i}_{param} : {expr}");
            }
            expr
        };
        let table = ROPE_TABLE.fill(&[
            ("HALF", &(d / 2).to_string()),
            ("POSITIONS", &pick("positions")),
            ("INV_FREQ", &pick("inv_freq")),
            ("PER_LANE", &(d / 32).to_string()),
        ]);
        let calls = chain(&norm_calls, "      ");
        if append_calls.is_empty() {
            dispatch = format!(
                "    {{
{table}{calls}    }}"
            );
        } else {
            dispatch = format!(
                "    if (h < {norm_heads}u) {{
{table}{calls}    }} else {{
"
            );
        }
    }
    let appends = chain(&append_calls, if norm_calls.is_empty() { "    " } else { "      " });
    dispatch.push_str(&appends);
    if !norm_calls.is_empty() && !append_calls.is_empty() {
        dispatch.push_str("    }");
    }
    let kernel = HEAD_ROWS.fill(&[
        ("HEADS", &heads.to_string()),
        ("D", &d.to_string()),
        ("DOC", &docs.join(", ")),
        ("PARTS", &functions.join("")),
        ("BLOCK", &(WARPS * 32).to_string()),
        ("NAME", name),
        ("PARAMS", &params.join("\n")),
        ("GRID_WAIT", GRID_WAIT),
        ("WARPS", &WARPS.to_string()),
        ("DISPATCH", dispatch.trim_end()),
    ]);
    let kind = match parts {
        [HeadPart::NormRope { append: false, .. }] => "norm_rope",
        [HeadPart::NormRope { append: true, .. }] => "norm_rope_kv_append",
        [HeadPart::Append { .. }] => "kv_append",
        _ => "head_rows",
    };
    Kernel {
        name: name.to_string(),
        kind,
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

/// The calls of parts (call, the end of its heads) as one `if`/`else if` chain on `h`, each line
/// indented by `ind`.
fn chain(calls: &[(String, usize, usize)], ind: &str) -> String {
    let mut s = String::new();
    for (k, (call, last, _)) in calls.iter().enumerate() {
        let line = match (k, k + 1 == calls.len()) {
            (0, true) => call.clone(),
            (0, false) => format!("if (h < {last}u) {call}"),
            (_, false) => format!("else if (h < {last}u) {call}"),
            (_, true) => format!("else {call}"),
        };
        s.push_str(&format!("{ind}{line}\n"));
    }
    s
}

/// The function of one part of a [`head_rows`] kernel, named `function`: one head `h` (of the
/// part's own) of token `t`, on lane `lane` of its warp.
fn part_function(function: &str, d: usize, dtype: DType, part: &HeadPart) -> String {
    let (st, per_lane, half) = (storage_type(dtype), d / 32, d / 2);
    let heads = part.heads();
    let x_view = match *part {
        HeadPart::NormRope { x_view, .. } | HeadPart::Append { x_view, .. } => x_view,
    };
    let vec = vector_elems(dtype, per_lane, &[per_lane, d, x_view.offset, x_view.row_stride]);
    let a = Access::new(dtype, per_lane, vec);
    let xv_load = lines(a.load("  ", "xv", "x", &format!("{} + h * {d}u + j0", view_row(x_view, "t"))));
    // The cache operand and the output are one buffer: written through `cache` only.
    let cache_store = || {
        format!(
            "  /* Position P + t of the paged cache: its block from the table, then its row. */\n  {}\n{}",
            cache_index("ci", heads, d),
            a.store("  ", "xv", "cache", "ci + j0")
        )
    };
    let common = [
        ("PART", function.to_string()),
        ("HEADS", heads.to_string()),
        ("D", d.to_string()),
        ("PER_LANE", per_lane.to_string()),
        ("STORAGE", st.to_string()),
        ("X_STRIDE", x_view.row_stride.to_string()),
        ("X_OFFSET", x_view.offset.to_string()),
        ("XV_DECL", a.decl("xv")),
        ("XV_LOAD", xv_load),
    ];
    let mut values: Vec<(&str, String)> = common.to_vec();
    let template = match *part {
        HeadPart::NormRope { eps, append, .. } => {
            let normed = rounded(dtype, &format!("{} * {}", load(dtype, "wv.e", "e"), rounded(dtype, "v[e] * inv")));
            let (c, sn) = (rounded(dtype, "cs[e]"), rounded(dtype, "sn[e]"));
            // The store rounds the sum to the dtype.
            let out = format!(
                "{} + {}",
                rounded(dtype, &format!("__fmul_rn(v[e], {c})")),
                rounded(dtype, &format!("__fmul_rn(rot, {sn})"))
            );
            let (output, out_params, setup, xv_store) = if append {
                (
                    "appended to the paged KV cache",
                    format!("const {st}* cache_in,\n    {st}* cache"),
                    APPEND_SETUP,
                    cache_store(),
                )
            } else {
                let y = format!("((unsigned long long)t * {heads}u + h) * {d}u + j0");
                ("contiguous", format!("{st}* __restrict__ y"), "", a.store("  ", "xv", "y", &y))
            };
            values.extend([
                ("OUTPUT", output.to_string()),
                ("LAST", (per_lane - 1).to_string()),
                ("HALF", half.to_string()),
                ("OUT_PARAMS", out_params),
                ("APPEND_SETUP", setup.to_string()),
                ("XV_E", load(dtype, "xv.e", "e")),
                ("EPS", f32_literal(eps)),
                ("WV_DECL", a.decl("wv")),
                ("WV_LOAD", lines(a.load("  ", "wv", "norm_w", "j0"))),
                ("NORMED", normed),
                ("OUT_E", store(dtype, "xv.e", "e", &out)),
                ("XV_STORE", lines(xv_store)),
            ]);
            NORM_ROPE
        }
        HeadPart::Append { .. } => {
            values.extend([
                ("CACHE_INDEX", cache_index("ci", heads, d)),
                ("XV_STORE", lines(a.store("  ", "xv", "cache", "ci + j0"))),
            ]);
            HEAD_APPEND
        }
    };
    let refs: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    template.fill(&refs)
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
