#!/usr/bin/env python3
"""Compares smelt's logits with a Hugging Face reference, row by row.

    python scripts/compare_logits.py OURS.safetensors REFERENCE.safetensors [--tol 1e-4]

OURS holds `logits` [T, vocab] (from `smelt logits`); REFERENCE holds `prefill_logits`
[T, vocab] (from `scripts/gen_fixtures.py`). Prints per-row relative error
||ours - ref|| / ||ref||, max abs error and top-1 agreement; exits 1 if any row exceeds --tol.
Needs numpy and safetensors (scripts/requirements-ref.txt).
"""
import argparse
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("reference")
    ap.add_argument("--tol", type=float, default=1e-4, help="max per-row relative error (default 1e-4)")
    a = ap.parse_args()
    ours = load_file(a.ours)["logits"].astype(np.float64)
    ref = load_file(a.reference)["prefill_logits"].astype(np.float64)
    if ours.shape != ref.shape:
        print(f"shape mismatch: ours {ours.shape}, reference {ref.shape}", file=sys.stderr)
        return 1
    rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    max_abs = np.abs(ours - ref).max(axis=1)
    top1 = (ours.argmax(axis=1) == ref.argmax(axis=1)).mean()
    for t, (r, m) in enumerate(zip(rel, max_abs)):
        print(f"row {t:4d}: rel err {r:.3e}  max abs {m:.3e}")
    print(f"rows {len(rel)}: worst rel err {rel.max():.3e} (row {rel.argmax()}), "
          f"max abs {max_abs.max():.3e}, top-1 agreement {top1:.4f}, tolerance {a.tol:g}")
    return 0 if rel.max() <= a.tol else 1


if __name__ == "__main__":
    sys.exit(main())
