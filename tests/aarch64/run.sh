#!/usr/bin/env bash
# The AArch64 build under user-mode emulation: cross-compiles shardserve for
# AArch64 (NEON and portable kernels), runs the bits test's prompts under
# qemu-aarch64 for both variants, and compares every token and log-probability
# with this machine's x86-64 result.
#   tests/aarch64/run.sh X86_BIN MODEL DATA [BUILD_DIR]
#   tests/aarch64/run.sh --install      (only install what is missing; scripts/test.sh)
# Installs what is missing (Debian: the cross compiler, qemu-user, the arm64
# libraries); the http-parser headers come unpacked into the build folder, since
# Debian's libhttp-parser-dev cannot be installed for two architectures at once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
install_only=0
[ "${1:-}" = "--install" ] && install_only=1
x86_bin=${1:-} model=${2:-} data=${3:-}
bld=${4:-$root/build-aarch64}
log() { printf '[aarch64] %s\n' "$*" >&2; }

arm_pkgs=(libpcre2-dev:arm64 libjansson-dev:arm64 libuv1-dev:arm64 libcurl4-openssl-dev:arm64
  libhttp-parser2.9:arm64 libunistring-dev:arm64 libc6:arm64)
host_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
missing=()
for p in "${host_pkgs[@]}" "${arm_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "$install_only" -eq 1 ] && exit 0
sysroot="$bld/sysroot"
if [ ! -f "$sysroot/usr/include/http_parser.h" ]; then
  mkdir -p "$sysroot"
  (cd "$sysroot" && apt-get download -qq libhttp-parser-dev:arm64 >/dev/null &&
    dpkg-deb -x libhttp-parser-dev_*_arm64.deb . && rm -f libhttp-parser-dev_*_arm64.deb) 2>/dev/null
fi

log "building in $bld"
PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
  cmake -S "$root" -B "$bld" -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE="$here/toolchain.cmake" \
  -DSS_CUDA=OFF -DSS_BUILD_TESTS=OFF -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON \
  -DSS_INC_SS_DEP_HTTP_PARSER="$sysroot/usr/include" \
  -DSS_LIB_SS_DEP_HTTP_PARSER="$sysroot/usr/lib/aarch64-linux-gnu/libhttp_parser.a" >/dev/null
PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
  cmake --build "$bld" -j "$(nproc)" --target shardserve >/dev/null
file "$bld/shardserve" | grep -q aarch64 || { echo "not an AArch64 binary: $bld/shardserve" >&2; exit 1; }

wrap="$bld/shardserve-qemu"
printf '#!/bin/sh\nexec qemu-aarch64 -L / "%s" "$@"\n' "$bld/shardserve" > "$wrap"
chmod +x "$wrap"
"$wrap" info --cpu
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
py="$root/.venv/bin/python"
# NEON and portable C on the random models (every tail path of the kernels;
# emulation makes a default-model run take a minute or more, and the default
# model's bits are compared across the x86-64 variants by test_isa_bits), the
# NEON results written, then the same models on x86-64 compared with them.

log "the bits test's runs under qemu-aarch64: neon and portable, the random models"
"$py" "$root/tests/test_isa_bits.py" --bin "$wrap" --model "$model" --data "$data" \
  --variants neon,portable --quick --default-prompts 0 --write-results "$out/aarch64.json"
log "the same runs on x86-64, compared with the AArch64 (neon) results"
"$py" "$root/tests/test_isa_bits.py" --bin "$x86_bin" --model "$model" --data "$data" \
  --variants "$("$x86_bin" info --cpu | sed -n 's/^chosen: *\([a-z0-9]*\).*/\1/p')" --quick \
  --default-prompts 0 --compare-results "$out/aarch64.json"
