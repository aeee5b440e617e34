#!/usr/bin/env python3
"""Merges what scripts/gpu-check measured into OUT/summary.json and OUT/summary.md.

    python3 scripts/gpu_summary.py OUT

Reads OUT/device.txt (nvidia-smi), accuracy.json, smelt-bench.json and torch-bench.json (each
optional: a missing one leaves its figures null) and bin/COMMIT (the commit the binary was
built from). Standard library only.
"""
import datetime
import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    out = Path(sys.argv[1])
    smelt = load(out / "smelt-bench.json")
    # Prefill and batched-decode figures come from a separate bench run.
    for k, v in load(out / "smelt-prefill.json").items():
        if k.startswith(("prefill_", "batched_")):
            smelt.setdefault(k, v)
    acc = load(out / "accuracy.json")
    torch = load(out / "torch-bench.json")
    commit = Path("bin/COMMIT").read_text().strip() if Path("bin/COMMIT").exists() else None
    device = smelt.get("device") or torch.get("device")
    keys = [
        "decode_ms_per_token_ctx1k",
        "decode_ms_per_token_ctx4k",
        "prefill_tokens_per_s_2048",
        "batched_decode_tokens_per_s_64",
    ]
    summary = {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        **{k: smelt.get(k) for k in keys},
        "logits_rel_err_vs_hf_f32": acc.get("logits_rel_err_vs_hf_f32"),
        "top1_agreement_vs_hf_bf16": acc.get("top1_agreement_vs_hf_bf16"),
        "smelt": smelt,
        "accuracy": acc,
        "baselines": torch.get("baselines", {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def fmt(v):
        return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    names = ["smelt"] + list(summary["baselines"])
    rows = [f"| figure | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for k in keys + ["decode_ms_per_token_ctx128"]:
        vals = [smelt.get(k)] + [b.get(k) if isinstance(b, dict) else None for b in summary["baselines"].values()]
        rows.append(f"| {k} | {' | '.join(fmt(v) for v in vals)} |")
    md = [
        f"# GPU check: {device}, {summary['date']}, commit {commit}",
        "",
        "Command: `scripts/gpu-check` (see the script for each step).",
        "",
        *rows,
        "",
        f"- logits rel err vs HF f32: {fmt(summary['logits_rel_err_vs_hf_f32'])}; "
        f"top-1 agreement vs HF bf16: {fmt(summary['top1_agreement_vs_hf_bf16'])}",
        f"- copy bandwidth: {fmt(smelt.get('copy_bandwidth_gb_s'))} GB/s; JIT cold {fmt(smelt.get('jit_cold_s'))} s, "
        f"cached {fmt(smelt.get('jit_cached_s'))} s; device memory {fmt(smelt.get('device_memory_used_bytes'))} B",
    ]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
