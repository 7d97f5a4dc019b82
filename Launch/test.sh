#!/usr/bin/env bash
# README command 2: install what is missing, build, run the whole test suite (unit tests, the
# Hugging Face oracle, end-to-end runs of the tessera binary under mpirun).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
tessera_install_missing
tessera_mpi_env
export OMPI_MCA_rmaps_base_oversubscribe=1
cd "$tessera_root"
tessera_build --build-tests
swift test --skip-build --disable-swift-testing "$@"
