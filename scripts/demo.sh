#!/usr/bin/env bash
# One command from a fresh machine to a running demo: setup (idempotent), then `voiceai demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/voiceai demo "$@"
