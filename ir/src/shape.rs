//! Shapes with fixed and symbolic dimensions.
//!
//! Symbolic dims stand for sizes known only when a graph runs: the batch, the number of new
//! tokens in this step, and the number of tokens already in the KV cache. Kernels receive their
//! values at run time through [`Bindings`].

use std::fmt;

/// A size known only at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sym {
    /// Sequences in the batch (`B`).
    Batch,
    /// Tokens processed in this step (`T`): the prompt in prefill, 1 in decode.
    NewTokens,
    /// Tokens already in the KV cache before this step (`P`, for "past").
    CachedTokens,
    /// `P+T`: the KV length once this step's tokens are appended.
    TotalTokens,
}

impl Sym {
    pub fn name(self) -> &'static str {
        match self {
            Sym::Batch => "B",
            Sym::NewTokens => "T",
            Sym::CachedTokens => "P",
            Sym::TotalTokens => "P+T",
        }
    }
}

/// One dimension of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Fixed(usize),
    Sym(Sym),
}

impl Dim {
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Sym(_) => None,
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<Sym> for Dim {
    fn from(s: Sym) -> Dim {
        Dim::Sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s.name()),
        }
    }
}

/// An ordered list of dims, outermost first (row-major).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn new(dims: impl IntoIterator<Item = Dim>) -> Shape {
        Shape(dims.into_iter().collect())
    }

    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    pub fn last(&self) -> Option<Dim> {
        self.0.last().copied()
    }

    /// Element count as (product of fixed dims, symbolic factors sorted), so that two shapes
    /// can be compared for a legal reshape without knowing the symbols' values.
    pub fn volume(&self) -> (usize, Vec<Sym>) {
        let mut fixed = 1;
        let mut syms = Vec::new();
        for d in &self.0 {
            match d {
                Dim::Fixed(n) => fixed *= n,
                Dim::Sym(s) => syms.push(*s),
            }
        }
        syms.sort();
        (fixed, syms)
    }

    /// The element count when every dim is fixed.
    pub fn fixed_volume(&self) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, d| n.checked_mul(d.fixed()?))
    }

    /// Elements under `b`; `None` when the count overflows `usize`.
    pub fn checked_volume(&self, b: &Bindings) -> Option<usize> {
        self.0.iter().try_fold(1usize, |n, d| n.checked_mul(b.dim(*d)))
    }

    /// Concrete sizes under `b`.
    pub fn resolve(&self, b: &Bindings) -> Vec<usize> {
        self.0.iter().map(|d| b.dim(*d)).collect()
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Values of the symbolic dims for one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    pub batch: usize,
    pub new_tokens: usize,
    pub cached_tokens: usize,
}

impl Bindings {
    pub fn sym(&self, s: Sym) -> usize {
        match s {
            Sym::Batch => self.batch,
            Sym::NewTokens => self.new_tokens,
            Sym::CachedTokens => self.cached_tokens,
            Sym::TotalTokens => self.cached_tokens + self.new_tokens,
        }
    }

    pub fn dim(&self, d: Dim) -> usize {
        match d {
            Dim::Fixed(n) => n,
            Dim::Sym(s) => self.sym(s),
        }
    }
}

/// Shorthand for building shapes: `shape![Sym::NewTokens, 1024]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { $crate::shape::Shape(vec![$($crate::shape::Dim::from($d)),*]) };
}
