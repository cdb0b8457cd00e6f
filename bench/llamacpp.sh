#!/usr/bin/env bash
# Builds the peer tools from the llama.cpp sources that the llama-cpp-python
# 0.3.36 sdist carries (llama-bench, llama-server, llama-quantize), once, into
# bench/.llamacpp/ (git-ignored).  Used by the benchmarks (the peer measured in
# the same run) and by the tests that need K-quant files made by llama-quantize.
#
#   bench/llamacpp.sh [--variant native|avx2] [--only-quantize]   -> prints the bin folder
#
# --only-quantize builds llama-quantize alone (what the tests need; faster).
#
# Variants: native (GGML_NATIVE=ON, the default); avx2 (AVX-512 off: the build
# an AVX2-only machine gets, for comparisons on an AVX-512 machine).
# Idempotent: an existing build of the variant is reused.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=0.3.36
variant=native
only_quantize=0
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant=$2; shift ;;
    --only-quantize) only_quantize=1 ;;
    *) echo "llamacpp.sh: unknown option '$1' (known: --variant native|avx2)" >&2; exit 2 ;;
  esac
  shift
done
case "$variant" in
  native) flags=(-DGGML_NATIVE=ON) ;;
  avx2|noavx512) flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                        -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF) ;;
  *) echo "llamacpp.sh: unknown variant '$variant'" >&2; exit 2 ;;
esac

base="${SS_CACHE:-$HOME/.cache/shardserve}/llamacpp"
src="$base/llama-cpp-python-$VERSION/vendor/llama.cpp"
bld="$base/build-$variant"
log() { printf '[llamacpp] %s\n' "$*" >&2; }

if [ ! -f "$src/CMakeLists.txt" ]; then
  mkdir -p "$base"
  py="$ROOT/.venv/bin/python"
  [ -x "$py" ] || py=python3
  log "fetching the llama-cpp-python $VERSION sdist from PyPI"
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$base"
  tar -xzf "$base/llama_cpp_python-$VERSION.tar.gz" -C "$base"
  [ -d "$base/llama_cpp_python-$VERSION" ] && mv "$base/llama_cpp_python-$VERSION" "$base/llama-cpp-python-$VERSION"
fi

targets=(llama-bench llama-server llama-quantize)
[ "$only_quantize" -eq 1 ] && targets=(llama-quantize)
missing=0
for t in "${targets[@]}"; do [ -x "$bld/bin/$t" ] || missing=1; done
if [ "$missing" -eq 1 ]; then
  log "building ${targets[*]} ($variant) into $bld (10+ minutes on 2 cores)"
  cmake -S "$src" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF "${flags[@]}" >/dev/null
  cmake --build "$bld" -j "${JOBS:-$(nproc)}" --target "${targets[@]}" >/dev/null
fi
echo "$bld/bin"
