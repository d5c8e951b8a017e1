"""`libra-edge doctor`: show what this build can do and smoke-test the model.

Also where the data lives.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from libra_edge.cli.common import add_command, add_model_options, guard_options
from libra_edge.errors import ExitCode, LibraError

EPILOG = """\
examples:
  libra-edge doctor                     build, CPU, folders, and a smoke test of the default model
  libra-edge doctor --model guard.gguf  smoke-test a particular file
  libra-edge doctor --no-smoke --json   facts only, as JSON
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "doctor", __doc__,
        description="Report the llama.cpp build (version, GPU offload, CPU features), where models "
                    "and data live, and run the selected model on two built-in pairs.",
        epilog=EPILOG)
    p.add_argument("--no-smoke", action="store_true", help="skip loading the model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from libra_edge.diagnostics import build_report, data_report, smoke_test

    build = build_report(args.threads)
    data = data_report()
    smoke: dict[str, object] = {"ran": False}
    if not args.no_smoke:
        try:
            report, results = smoke_test(args.model, **guard_options(args))
        except LibraError as exc:
            smoke = {"ran": False, "error": str(exc)}
        else:
            smoke = {
                "ran": True,
                "model": report.path,
                "architecture": report.architecture,
                "quant": report.quant,
                "chat_template": report.chat_template,
                "imatrix": report.imatrix,
                "imatrix_calibration_sha256": report.imatrix_calibration_sha256,
                "label_tokens": {
                    label: [{"id": i, "text": text} for i, text in tokens]
                    for label, tokens in report.label_tokens.items()
                },
                "results": [asdict(r) for r in results],
            }
    if args.json:
        print(json.dumps({"build": asdict(build), "data": data, "smoke": smoke}, ensure_ascii=False, indent=2))
        return _smoke_status(smoke, args.no_smoke)
    pin = build.llama_cpp_python_pinned
    found = build.llama_cpp_python_version
    print(f"libra-edge {build.libra_edge_version}, llama-cpp-python {found} (pinned {pin}"
          + ("" if found == pin else "; MISMATCH: reinstall with ./install.sh") + ")")
    print(f"GPU offload compiled: {'yes' if build.gpu_offload else 'no (CPU only)'}")
    print(f"CPU: {build.cpu_model}; features: {' '.join(build.cpu_flags) or 'unknown'}")
    if build.cpu_variant:
        others = [v for v in build.cpu_variants if v != build.cpu_variant]
        print(f"CPU kernels: {build.cpu_variant}, chosen when llama.cpp loaded (portable build; "
              f"also carries {', '.join(others)}; the AMX one, sapphirerapids, is never chosen)")
    else:
        print("CPU kernels: built in (a build for one CPU: ./install.sh --native, or your own CMAKE_ARGS)")
    print(f"threads: {build.threads_why}")
    print(f"llama.cpp: {build.system_info}")
    for warning in build.warnings:
        print(f"WARNING: {warning}")
    print(f"data folder: {data['home']}  (set LIBRA_EDGE_HOME to move it)")
    print(f"  models:   {data['models_dir']} ({len(data['models'])} installed"
          + (f", default {data['default_model']}" if data["default_model"] else "") + ")")
    print(f"  database: {data['database']}")
    print(f"  config:   {data['config']}")
    if not smoke["ran"]:
        print("smoke test: " + (f"not run: {smoke['error']}" if "error" in smoke else "skipped"))
        status = _smoke_status(smoke, args.no_smoke)
        if status == ExitCode.MODEL:
            print("smoke test FAILED: it could not run (exit 3; --no-smoke skips it)")
        return status
    print(f"model: {smoke['model']} (architecture {smoke['architecture']}, {smoke['quant']})")
    template = smoke["chat_template"]
    print("  chat template: " + ("the GGUF's own" if template == "gguf"
                                 else "fallback (Qwen2.5 ChatML; the GGUF has none)"))
    from libra_edge.diagnostics import imatrix_line  # issue 26: the importance matrix line

    print(f"  {imatrix_line(str(smoke['quant']), smoke.get('imatrix'))}")  # type: ignore[arg-type]
    for label, tokens in smoke["label_tokens"].items():  # type: ignore[attr-defined]
        shown = ", ".join(f"{t['text']!r} ({t['id']})" for t in tokens[:8])
        more = f", ... {len(tokens)} in all" if len(tokens) > 8 else ""
        print(f"  tokens that begin {label}: {shown}{more}")
    print("smoke test:")
    for r in smoke["results"]:  # type: ignore[attr-defined]
        ok = "parsed" if r["parsed"] else "UNPARSABLE"
        print(f"  expected {r['expected']:<4} got {r['label']:<4} score {r['score']:.3f}  "
              f"{r['seconds']:.2f} s  {ok}  {r['question']}")
    status = _smoke_status(smoke, args.no_smoke)
    if status == ExitCode.MODEL:
        rows: list[dict[str, Any]] = smoke["results"]  # type: ignore[assignment]
        wrong = len([r for r in rows if not (r["parsed"] and r["label"] == r["expected"])])
        print(f"smoke test FAILED: {wrong} of {len(rows)} built-in pairs judged wrongly "
              "(exit 3; a model that is not a trained Libra-Guard does this)")
    else:
        print("smoke test passed")
    return status


def _smoke_status(smoke: dict[str, object], skipped: bool) -> int:
    """Exit 3 (model problem) when the smoke test could not run or a pair came out wrong."""
    if skipped:
        return ExitCode.OK
    results = smoke.get("results")
    if not smoke.get("ran") or not isinstance(results, list):
        return ExitCode.MODEL
    good = all(r["parsed"] and r["label"] == r["expected"] for r in results)
    return ExitCode.OK if good else ExitCode.MODEL
