"""Converter benchmark on a Qwen2.5-3B-shaped checkpoint: wall time and peak RSS of each step.

    .venv/bin/python tests/benchmarks/bench_convert.py [--end-to-end]

Each step runs in its own child process; peak RSS is that child's ru_maxrss (os.wait4).
Steps: HF (bf16 safetensors) -> F16 GGUF, and F16 -> Q4_K_M with llama.cpp's quantizer in
process; `--end-to-end` adds HF -> Q4_K_M through `libra-edge convert`. With LLAMA_CPP_DIR
pointing at a llama.cpp checkout (outside this repo), its convert_hf_to_gguf.py and
llama-quantize (if built: `cmake -B build && cmake --build build --target llama-quantize`) run on
the same checkpoint for comparison; its converter runs with this venv's torch/transformers
and imports `sentencepiece` even for BPE vocabularies, so that must be importable too. Reference figures for
llama.cpp's own tools on this machine (issue #3): HF->F16 34.5 s / 2.25 GB, F16->Q4_K_M
107 s / 2.15 GB. The checkpoint and outputs stay in .bench/ for reuse.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_3b_gguf import BENCH, Q4_K_M, build_checkpoint  # noqa: E402

PY = sys.executable
F16 = BENCH / "qwen2.5-3b-random-f16.gguf"


def measure(label: str, cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` as a child; print and return (wall seconds, peak RSS in GB)."""
    # stderr goes to a file, not a pipe: a chatty child (llama-quantize logs every tensor)
    # would fill the pipe and block while we wait for it to exit.
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        log.seek(0)
        err = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"{label}: FAILED\n{err[-2000:]}", file=sys.stderr)
        return wall, float("nan")
    rss_gb = usage.ru_maxrss * 1024 / 1e9  # Linux reports KiB
    print(f"{label:<44} {wall:7.1f} s   peak RSS {rss_gb:5.2f} GB", flush=True)
    return wall, rss_gb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--end-to-end", action="store_true", help="also time HF -> Q4_K_M in one command")
    args = parser.parse_args()
    src = build_checkpoint()
    print(f"checkpoint {src}: {sum(f.stat().st_size for f in src.glob('*.safetensors')) / 1e9:.2f} GB bf16, "
          f"{os.cpu_count()} CPUs", flush=True)
    for stale in (F16,):
        stale.unlink(missing_ok=True)
    measure("libra-edge: HF -> F16", [PY, "-m", "convert", str(src), "-o", str(F16), "--outtype", "f16"])
    quant = (f"from pathlib import Path; from libra_edge.convert import quantize_gguf; "
             f"quantize_gguf(Path({str(F16)!r}), Path({str(Q4_K_M)!r}), 'q4_k_m')")
    Q4_K_M.unlink(missing_ok=True)
    measure("libra-edge: F16 -> Q4_K_M (llama.cpp in process)", [PY, "-c", quant])
    print(f"  F16 {F16.stat().st_size / 1e9:.2f} GB, Q4_K_M {Q4_K_M.stat().st_size / 1e9:.2f} GB "
          f"(kept for the runtime/batch benchmarks: {Q4_K_M})")
    if args.end_to_end:
        e2e = BENCH / "qwen2.5-3b-random-e2e-q4_k_m.gguf"
        measure("libra-edge: HF -> Q4_K_M (one command)",
                [PY, "-m", "convert", str(src), "-o", str(e2e), "--outtype", "q4_k_m"])
        e2e.unlink(missing_ok=True)
    llama_dir = os.environ.get("LLAMA_CPP_DIR")
    if llama_dir:
        ref = BENCH / "llama-cpp-f16.gguf"
        measure("llama.cpp convert_hf_to_gguf.py: HF -> F16",
                [PY, str(Path(llama_dir) / "convert_hf_to_gguf.py"), str(src), "--outfile", str(ref), "--outtype", "f16"])
        quantize_bin = Path(llama_dir) / "build" / "bin" / "llama-quantize"
        if quantize_bin.is_file():
            measure("llama.cpp llama-quantize: F16 -> Q4_K_M",
                    [str(quantize_bin), str(ref), str(BENCH / "llama-cpp-q4_k_m.gguf"), "Q4_K_M"])
    else:
        print("llama.cpp's own tools (issue #3, this machine): HF -> F16 34.5 s / 2.25 GB, "
              "F16 -> Q4_K_M 107 s / 2.15 GB  (set LLAMA_CPP_DIR to re-measure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
