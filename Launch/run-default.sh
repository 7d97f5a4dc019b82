#!/usr/bin/env bash
# README command 1: install what is missing, build in release mode, fetch the text, train the default
# job end to end (progress, evaluation, a text sample at the end).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
tessera_ready_job
exec "$here/tessera-run" Configs/default.toml "$@"
