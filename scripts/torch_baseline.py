#!/usr/bin/env python3
"""PyTorch / Hugging Face baseline and correctness reference for smelt (Qwen3).

  make-model  Random-weight checkpoint, real Qwen3-0.6B config by default (--config FILE for
              another): bf16 model.safetensors + config.json + generation_config.json, built
              on the GPU when there is one. Init as scripts/gen_fixtures.py init_weights:
              linear/embedding weights ~ N(0, std), RMSNorm gains ~ 1 + 0.1 N(0, 1).
  reference   Seeded random prompt; one no-cache forward of HF Qwen3ForCausalLM in f32 (eager
              attention, no TF32) and one in bf16 (sdpa). Writes prompt_ids i32 [N],
              logits_f32 f32 [N, vocab], argmax_bf16 i32 [N].
  logits      HF's counterpart of `smelt logits`: one no-cache forward of the given ids with
              the weights in --dtype (f32 or bf16), `logits` f32 [N, vocab] to --out. Run
              both under /usr/bin/time -v to compare peak memory on one checkpoint.
  compare     Our `logits` [N, vocab] vs a reference: relative error (whole tensor, worst row),
              max abs error, top-1 agreement; exit 1 past --max-rel-err / --min-top1.
  bench       HF transformers bf16 speed on the same weights: batch-1 decode ms/token at two
              contexts, prefill tokens/s, batched decode tokens/s; with --compile also
              StaticCache + torch.compile(mode="reduce-overhead") decode, within --time-budget-s.

How scripts/gpu-check uses it (one H100/H200, no network; $W a scratch dir):
  python3 scripts/torch_baseline.py make-model --out $W/model
  python3 scripts/torch_baseline.py reference --model $W/model --prompt-len 128 --out $W/ref.safetensors
  (smelt writes `logits` f32 [N, vocab] for ref.safetensors' prompt_ids to $W/ours.safetensors)
  python3 scripts/torch_baseline.py compare --ours $W/ours.safetensors --reference $W/ref.safetensors --json $W/cmp.json
  python3 scripts/torch_baseline.py bench --model $W/model --out $W/torch_bench.json --compile --time-budget-s 150
CPU smoke test: bench ... --device cpu --ctx 64,128 --prefill 64 --batch 4 --batch-prompt 16 --decode-steps 8

Needs torch, transformers 5.x, safetensors, numpy (scripts/requirements-ref.txt); no accelerate.
Progress lines start with [torch_baseline] and are flushed at once.
"""

from __future__ import annotations

import time

T0 = time.time()  # --time-budget-s counts from here

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM, StaticCache
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

transformers.utils.logging.disable_progress_bar()
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from gen_fixtures import is_norm_weight  # noqa: E402

CONFIGS = SCRIPTS.parent / "models/assets/qwen3/configs"


def log(msg: str) -> None:
    print(f"[torch_baseline] {msg}", flush=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def random_ids(vocab: int, shape: tuple, seed: int, dev: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=gen, dtype=torch.long).to(dev)


def load_model(path: str, dtype: torch.dtype, attn: str, dev: torch.device) -> Qwen3ForCausalLM:
    # No device_map: that needs `accelerate`, which requirements-ref.txt does not pin.
    model = Qwen3ForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return model.to(dev).eval()


@torch.no_grad()
def cmd_make_model(a: argparse.Namespace) -> int:
    dev = pick_device(a.device)
    cfg_path = Path(a.config)
    raw = json.loads(cfg_path.read_text())
    config = Qwen3Config(**raw)
    log(f"make-model: {cfg_path.name} ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"vocab {config.vocab_size}) on {dev}, seed {a.seed}, std {a.weight_std}")
    # Build on meta (skips HF's own init), then allocate bf16 storage on the device.
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model = model.to(torch.bfloat16).to_empty(device=dev)
    # to_empty() left the non-persistent inv_freq buffer uninitialised: rebuild it (f32).
    with torch.device(dev):
        model.model.rotary_emb = Qwen3RotaryEmbedding(config)
    model.tie_weights()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Same scheme as gen_fixtures.init_weights (f32 draws rounded to bf16), drawn on the device;
    # on CPU (or with --cpu-rng) the values equal `gen_fixtures.py full-0.6b` for the same seed.
    rng_dev = torch.device("cpu") if a.cpu_rng else dev
    gen = torch.Generator(device=rng_dev).manual_seed(a.seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        v = torch.randn(p.shape, generator=gen, device=rng_dev, dtype=torch.float32).to(dev)
        p.copy_(1.0 + 0.1 * v if is_norm_weight(name) else a.weight_std * v)
    sync(dev)
    log(f"init done ({time.time() - T0:.1f}s)")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    # Like the real Qwen3-0.6B checkpoint: lm_head.weight is stored (a copy) even when tied.
    sd["lm_head.weight"] = model.lm_head.weight.clone()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    del sd, model
    cfg_out = {k: ("bfloat16" if k in ("dtype", "torch_dtype") else v) for k, v in raw.items()}
    if cfg_out == raw:
        shutil.copyfile(cfg_path, out / "config.json")
    else:
        (out / "config.json").write_text(json.dumps(cfg_out, indent=2) + "\n")
    cands = [cfg_path.with_name(cfg_path.stem + ".generation_config.json"), cfg_path.parent / "generation_config.json"]
    gen_cfg = Path(a.generation_config) if a.generation_config else next((c for c in cands if c.exists()), None)
    if gen_cfg is not None:
        shutil.copyfile(gen_cfg, out / "generation_config.json")
    else:
        (out / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": raw.get("bos_token_id"), "eos_token_id": raw.get("eos_token_id")}, indent=2) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors creates files 0600
    size = (out / "model.safetensors").stat().st_size
    log(f"wrote {out} (model.safetensors {size / 2**20:.0f} MiB) in {time.time() - T0:.1f}s total")
    return 0


@torch.no_grad()
def cmd_reference(a: argparse.Namespace) -> int:
    dev = pick_device(a.device)
    if dev.type == "cuda":  # a true f32 reference: no TF32 anywhere
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = load_model(a.model, torch.float32, "eager", dev)
    vocab = model.config.vocab_size
    ids = random_ids(vocab, (a.prompt_len,), a.seed, dev)
    log(f"loaded {a.model} as f32 on {dev} ({time.time() - T0:.1f}s); prompt_len {a.prompt_len}, seed {a.seed}")
    logits32 = model(input_ids=ids[None], use_cache=False).logits[0].float()
    sync(dev)
    log(f"f32 eager forward done ({time.time() - T0:.1f}s); logits std {logits32.std():.3f}")
    for p in model.parameters():  # cast weights only: model.to() would also round RoPE inv_freq to bf16,
        p.data = p.data.to(torch.bfloat16)  # which from_pretrained(dtype=bf16) does not do
    model.set_attn_implementation("sdpa")
    logits16 = model(input_ids=ids[None], use_cache=False).logits[0].float()
    argmax16 = logits16.argmax(-1)
    bf16_rel = float((logits16 - logits32).norm() / logits32.norm())
    bf16_agree = float((argmax16 == logits32.argmax(-1)).float().mean())
    top2 = torch.topk(logits32, 2, dim=-1).values
    min_margin = float((top2[:, 0] - top2[:, 1]).min())
    log(f"bf16 sdpa forward done: rel err vs f32 {bf16_rel:.3e}, top-1 agreement with f32 {bf16_agree:.4f}, "
        f"min f32 top1-top2 margin {min_margin:.4f}")
    meta = {
        "generator": "scripts/torch_baseline.py reference", "model": str(a.model), "seed": a.seed,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "logits_f32": "HF f32, attn eager, no cache, no TF32", "argmax_bf16": "HF bf16 weights, attn sdpa",
        "bf16_rel_err_vs_f32": f"{bf16_rel:.4e}", "bf16_top1_agreement_vs_f32": f"{bf16_agree:.4f}",
        "min_top1_top2_margin_f32": f"{min_margin:.5f}",
    }
    save_file({
        "prompt_ids": ids.to(torch.int32).cpu(),
        "logits_f32": logits32.cpu(),
        "argmax_bf16": argmax16.to(torch.int32).cpu(),
    }, a.out, metadata={k: str(v) for k, v in meta.items()})
    log(f"wrote {a.out} ({time.time() - T0:.1f}s total)")
    return 0


def cmd_logits(a: argparse.Namespace) -> int:
    dev = pick_device(a.device)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = load_model(a.model, dtype, "eager" if a.dtype == "f32" else "sdpa", dev)
    ids = torch.tensor([int(t) for t in a.prompt_ids.split(",")], device=dev)
    log(f"loaded {a.model} as {a.dtype} on {dev} ({time.time() - T0:.1f}s); {len(ids)} ids")
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0].float()
    save_file({"logits": logits.cpu().contiguous()}, a.out,
              metadata={"generator": "scripts/torch_baseline.py logits", "dtype": a.dtype})
    log(f"wrote {a.out} ({time.time() - T0:.1f}s total)")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    ours = load_np(a.ours)[a.key].astype(np.float32)
    ref_file = load_np(a.reference)
    ref, am16 = ref_file["logits_f32"].astype(np.float32), ref_file["argmax_bf16"].astype(np.int64)
    while ours.ndim > 2 and ours.shape[0] == 1:
        ours = ours[0]
    if ours.shape != ref.shape:
        err = f"shape mismatch: ours {list(ours.shape)}, reference {list(ref.shape)}"
        log(f"FAIL: {err}")
        if a.json:
            Path(a.json).write_text(json.dumps({"pass": False, "error": err}) + "\n")
        return 1
    err_rows, ref_rows, max_abs = np.zeros(len(ref)), np.zeros(len(ref)), []
    for i in range(0, len(ref), 64):  # f64 sums, 64 rows at a time (bounded memory)
        d = ours[i:i + 64].astype(np.float64) - ref[i:i + 64]
        err_rows[i:i + 64] = np.sqrt((d * d).sum(axis=1))
        ref_rows[i:i + 64] = np.sqrt(np.square(ref[i:i + 64], dtype=np.float64).sum(axis=1))
        max_abs.append(np.abs(d).max())  # NaN propagates
    rel = float(np.sqrt((err_rows ** 2).sum() / (ref_rows ** 2).sum()))
    row_rel = err_rows / ref_rows
    top1 = ours.argmax(axis=1)
    top2 = np.partition(ref, -2, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > a.confident_margin  # rows with a clear HF f32 winner
    with safe_open(a.reference, "np") as f:
        meta = f.metadata() or {}
    agree32 = top1 == ref.argmax(axis=1)
    res = {
        "logits_rel_err_vs_hf_f32": rel, "worst_row_rel_err": float(row_rel.max()), "worst_row": int(row_rel.argmax()),
        "max_abs_err": float(np.max(max_abs)), "top1_agreement_vs_hf_bf16": float((top1 == am16).mean()),
        "top1_agreement_vs_hf_f32": float(agree32.mean()),
        # Informational unless gated by --top1-ref: agreement on rows with a clear f32 winner, and
        # how far HF's own bf16 run is from its f32 run (calibration for the thresholds).
        "top1_agreement_vs_hf_f32_confident": float(agree32[confident].mean()) if confident.any() else float("nan"),
        "confident_rows": int(confident.sum()), "confident_margin": a.confident_margin,
        "hf_bf16_rel_err_vs_hf_f32": float(meta.get("bf16_rel_err_vs_f32", "nan")),
        "hf_bf16_top1_agreement_vs_hf_f32": float(meta.get("bf16_top1_agreement_vs_f32", "nan")),
        "rows": int(ref.shape[0]), "max_rel_err_allowed": a.max_rel_err, "min_top1_agreement_required": a.min_top1,
    }
    gate = {"bf16": "top1_agreement_vs_hf_bf16", "f32": "top1_agreement_vs_hf_f32",
            "f32-confident": "top1_agreement_vs_hf_f32_confident"}[a.top1_ref]
    ok = bool(np.isfinite(ours).all() and rel <= a.max_rel_err and res[gate] >= a.min_top1)
    res.update(top1_gate=gate, **{"pass": ok})
    log(f"logits_rel_err_vs_hf_f32    {rel:.4e}")
    log(f"worst_row_rel_err           {res['worst_row_rel_err']:.4e}  (row {res['worst_row']})")
    log(f"max_abs_err                 {res['max_abs_err']:.4e}")
    log(f"top1_agreement_vs_hf_bf16   {res['top1_agreement_vs_hf_bf16']:.4f}")
    log(f"top1_agreement_vs_hf_f32    {res['top1_agreement_vs_hf_f32']:.4f}  "
        f"({res['top1_agreement_vs_hf_f32_confident']:.4f} on the {res['confident_rows']} rows with f32 "
        f"top1-top2 > {a.confident_margin:g})")
    log(f"calibration: HF bf16 vs HF f32 on this prompt: rel err {res['hf_bf16_rel_err_vs_hf_f32']:.4e}, "
        f"top-1 agreement {res['hf_bf16_top1_agreement_vs_hf_f32']:.4f}")
    log(("PASS" if ok else "FAIL") + f" (gates: rel err <= {a.max_rel_err:g}, {gate} >= {a.min_top1:g})")
    if a.json:  # NaN/inf as strings, to keep the file strict JSON
        res = {k: str(v) if isinstance(v, float) and not np.isfinite(v) else v for k, v in res.items()}
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0 if ok else 1


class Timer:
    """Wall time of a region in ms: CUDA events on a GPU (after a sync), perf_counter on CPU."""

    def __init__(self, dev: torch.device):
        self.cuda = dev.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            self.ev[0].record()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.ev[1].record()
            self.ev[1].synchronize()
        self.ms = self.ev[0].elapsed_time(self.ev[1]) if self.cuda else (time.perf_counter() - self.t) * 1e3


def tok_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def decode_ms(model, fwd, dev, ctx: int, steps: int, batch: int, seed: int, cache=None) -> float:
    """Prefill a random [batch, ctx] prompt into a cache (untimed), then time `steps`
    greedy single-token forwards (argmax on the device, no host sync per step)."""
    ids = random_ids(model.config.vocab_size, (batch, ctx), seed, dev)
    if cache is None:
        cache = DynamicCache(config=model.config)
    cache.reset()  # a StaticCache is reused (fixed addresses for the CUDA graphs)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    compiled = fwd is not model
    with Timer(dev) as t:
        for _ in range(steps):
            if compiled:
                torch.compiler.cudagraph_mark_step_begin()
            out = fwd(input_ids=tok, past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
    return t.ms


def prefill_ms(model, dev, n: int, seed: int) -> float:
    ids = random_ids(model.config.vocab_size, (1, n), seed, dev)
    with Timer(dev) as t:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return t.ms


def median_of(fn, warmup: int, repeats: int) -> tuple[float, list]:
    for _ in range(warmup):
        fn()
    runs = [fn() for _ in range(repeats)]
    return statistics.median(runs), [round(r, 3) for r in runs]


@torch.no_grad()
def cmd_bench(a: argparse.Namespace) -> int:
    dev = pick_device(a.device)
    ctxs = [int(c) for c in a.ctx.split(",")]
    model = load_model(a.model, torch.bfloat16, "sdpa", dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    log(f"loaded {a.model} bf16 sdpa on {name} ({time.time() - T0:.1f}s)")
    rep, wu = a.repeats, a.warmup
    eager, raw = {}, {}

    def measure(key: str, run, figure) -> None:  # figure: median ms -> reported unit
        med, raw[key] = median_of(run, wu, rep)
        eager[key] = figure(med)
        log(f"eager {key} = {eager[key]:.3f} ({time.time() - T0:.1f}s)")

    for ctx in ctxs:
        measure(f"decode_ms_per_token_ctx{tok_label(ctx)}",
                lambda ctx=ctx: decode_ms(model, model, dev, ctx, a.decode_steps, 1, ctx),
                lambda ms: ms / a.decode_steps)
    measure(f"prefill_tokens_per_s_{a.prefill}", lambda: prefill_ms(model, dev, a.prefill, 7),
            lambda ms: a.prefill * 1e3 / ms)
    measure(f"batched_decode_tokens_per_s_{a.batch}",
            lambda: decode_ms(model, model, dev, a.batch_prompt, a.batch_steps, a.batch, 11),
            lambda ms: a.batch * a.batch_steps * 1e3 / ms)
    eager["raw_runs_total_ms"] = raw  # each timed repeat, whole region (all decode steps / the prefill)

    res = {
        "device": name, "torch": torch.__version__, "transformers": transformers.__version__,
        "model": str(a.model),
        "settings": {"dtype": "bfloat16", "attn_implementation": "sdpa", "decode_steps": a.decode_steps,
                     "batch_prompt_tokens": a.batch_prompt, "batch_decode_steps": a.batch_steps,
                     "repeats": rep, "warmup": wu, "statistic": "median"},
        "baselines": {"hf_eager_bf16": eager, "hf_static_compile_bf16": {"skipped": "--compile not given"}},
    }

    def write() -> None:
        res["total_s"] = round(time.time() - T0, 1)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")

    write()  # the eager figures survive even if the compiled part is killed or crashes
    compiled: dict = res["baselines"]["hf_static_compile_bf16"]
    if a.compile:
        compiled = res["baselines"]["hf_static_compile_bf16"] = {"compile_and_warmup_s": {}}
        skipped = []
        fwd = torch.compile(model.__call__, mode="reduce-overhead")  # as HF generate's CompileConfig
        last_compile = 0.0
        for ctx in ctxs:
            key = f"decode_ms_per_token_ctx{tok_label(ctx)}"
            left = a.time_budget_s - (time.time() - T0)
            need = max(a.compile_reserve_s, 1.2 * last_compile)
            if left < need:
                skipped.append(f"{key}: {left:.0f}s left of --time-budget-s {a.time_budget_s:g}, need ~{need:.0f}s")
                log(f"compiled {key} skipped (out of time)")
                continue
            try:
                cache = StaticCache(config=model.config, max_cache_len=ctx + a.decode_steps)
                t = time.time()  # the first runs compile and record CUDA graphs
                for _ in range(2):
                    decode_ms(model, fwd, dev, ctx, a.decode_steps, 1, ctx, cache)
                last_compile = time.time() - t
                compiled["compile_and_warmup_s"][key] = round(last_compile, 1)
                med, _ = median_of(lambda: decode_ms(model, fwd, dev, ctx, a.decode_steps, 1, ctx, cache), 0, rep)
            except Exception as e:  # noqa: BLE001 - report, keep the eager figures
                skipped.append(f"{key}: error {type(e).__name__}: {str(e)[:300]}")
                log(f"compiled {key} FAILED: {type(e).__name__}: {e}")
                break
            compiled[key] = med / a.decode_steps
            log(f"compiled {key} = {compiled[key]:.3f} (compile+warm-up {last_compile:.1f}s, "
                f"{time.time() - T0:.1f}s)")
            write()
        if skipped:
            compiled["skipped"] = "; ".join(skipped)
    write()
    keys = [k for k in eager if k != "raw_runs_total_ms"]
    log(f"{'figure':<36} {'hf_eager_bf16':>15} {'hf_static_compile_bf16':>24}")
    for k in keys:
        c = compiled.get(k)
        fmt = "%.3f" if "_ms_" in k else "%.0f"
        log(f"{k:<36} {fmt % eager[k]:>15} {fmt % c if c is not None else '-':>24}")
    if "skipped" in compiled:
        log(f"compiled: skipped: {compiled['skipped']}")
    log(f"wrote {a.out} ({time.time() - T0:.1f}s total)")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    dev_help = "auto (default: cuda if available, else cpu), cuda or cpu"

    m = sub.add_parser("make-model", help="random-weight bf16 checkpoint (default: real Qwen3-0.6B config)")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--seed", type=int, default=600)
    m.add_argument("--weight-std", type=float, default=0.05, help="std of linear/embedding weights (0.05)")
    m.add_argument("--config", default=str(CONFIGS / "qwen3-0.6b.json"), help="config.json (default: Qwen3-0.6B)")
    m.add_argument("--generation-config", help="file to copy (default: <config stem>.generation_config.json "
                   "or generation_config.json next to --config, else a minimal one)")
    m.add_argument("--device", default="auto", help=dev_help)
    m.add_argument("--cpu-rng", action="store_true", help="draw on the CPU even with a GPU (slower; then the "
                   "weights equal `gen_fixtures.py full-0.6b` when it kept its first seed)")
    m.set_defaults(func=cmd_make_model)

    r = sub.add_parser("reference", help="HF f32 logits + bf16 argmax over a random prompt")
    r.add_argument("--model", required=True, help="checkpoint directory")
    r.add_argument("--prompt-len", type=int, required=True)
    r.add_argument("--out", required=True, help="output .safetensors")
    r.add_argument("--seed", type=int, default=1234, help="prompt seed (default 1234)")
    r.add_argument("--device", default="auto", help=dev_help)
    r.set_defaults(func=cmd_reference)

    lg = sub.add_parser("logits", help="HF logits of given ids with weights in --dtype (smelt logits' twin)")
    lg.add_argument("--model", required=True, help="checkpoint directory")
    lg.add_argument("--prompt-ids", required=True, help="comma-separated token ids, e.g. 5,17,42")
    lg.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    lg.add_argument("--out", required=True, help="output .safetensors holding `logits` f32 [N, vocab]")
    lg.add_argument("--device", default="cpu", help=dev_help)
    lg.set_defaults(func=cmd_logits)
    c = sub.add_parser("compare", help="compare our logits with a reference file; exit 1 on failure")
    c.add_argument("--ours", required=True, help=".safetensors holding `logits` f32 [N, vocab]")
    c.add_argument("--reference", required=True, help="output of the reference subcommand")
    c.add_argument("--json", help="write the figures here")
    c.add_argument("--key", default="logits", help="tensor name in --ours (default logits)")
    c.add_argument("--max-rel-err", type=float, default=2e-2, help="gate on logits_rel_err_vs_hf_f32 (2e-2)")
    c.add_argument("--min-top1", type=float, default=0.98, help="gate on top-1 agreement (0.98)")
    c.add_argument("--top1-ref", choices=["bf16", "f32", "f32-confident"], default="bf16",
                   help="which agreement --min-top1 gates: vs argmax_bf16 (default), vs f32 argmax, or vs "
                   "f32 argmax on rows with f32 top1-top2 > --confident-margin")
    c.add_argument("--confident-margin", type=float, default=0.2, help="see --top1-ref (default 0.2)")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("bench", help="HF transformers bf16 speed baseline -> JSON")
    b.add_argument("--model", required=True, help="checkpoint directory")
    b.add_argument("--out", required=True, help="output .json")
    b.add_argument("--device", default="auto", help=dev_help)
    b.add_argument("--compile", action="store_true", help="also StaticCache + torch.compile(reduce-overhead) decode")
    b.add_argument("--time-budget-s", type=float, default=150.0,
                   help="a compiled figure starts only if this much script time is left for it (default 150)")
    b.add_argument("--compile-reserve-s", type=float, default=60.0,
                   help="time assumed for the first compile (default 60; later: 1.2x the previous one)")
    b.add_argument("--ctx", default="1024,4096", help="decode context lengths (default 1024,4096)")
    b.add_argument("--decode-steps", type=int, default=32)
    b.add_argument("--prefill", type=int, default=2048, help="prefill length (default 2048)")
    b.add_argument("--batch", type=int, default=64, help="batched-decode batch size (default 64)")
    b.add_argument("--batch-prompt", type=int, default=128, help="batched-decode prompt length (default 128)")
    b.add_argument("--batch-steps", type=int, default=16, help="batched-decode steps (default 16)")
    b.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default 5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed runs before each eager figure (default 1)")
    b.set_defaults(func=cmd_bench)

    a = p.parse_args()
    log(f"{a.cmd}: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
