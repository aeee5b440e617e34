#!/usr/bin/env python3
"""The table of scripts/gpu-bench-ab: for each figure smelt bench wrote (decode ms/token,
prefill and batched tokens/s), each variant's median over its rounds and its ratio to the
first variant's.

Usage: scripts/ab_table.py OUT_DIR VARIANT...   (reads OUT_DIR/bench-<i>-<round>.json)
"""
import glob
import json
import statistics
import sys

FIGURES = ("decode_ms_per_token_", "prefill_tokens_per_s_", "batched_decode_tokens_per_s_")


def medians(out, i):
    """{figure: (median, rounds)} of variant i."""
    runs = []
    for path in sorted(glob.glob(f"{out}/bench-{i}-*.json")):
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    keys = sorted({k for r in runs for k, v in r.items() if k.startswith(FIGURES) and isinstance(v, (int, float))})
    return {k: (statistics.median(r[k] for r in runs if k in r), sum(k in r for r in runs)) for k in keys}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, variants = sys.argv[1], sys.argv[2:]
    table = [medians(out, i + 1) for i in range(len(variants))]
    figures = sorted({k for t in table for k in t})
    print("| figure | " + " | ".join(f"{i + 1}: `{v}`" for i, v in enumerate(variants)) + " |")
    print("|---|" + "---|" * len(variants))
    for k in figures:
        base = table[0].get(k, (None, 0))[0]
        cells = []
        for t in table:
            if k not in t:
                cells.append("—")
                continue
            value, rounds = t[k]
            ratio = f" ({value / base:.3f}×)" if base else ""
            cells.append(f"{value:.4g}{ratio}, n={rounds}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    if not figures:
        print("no bench figures found")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
