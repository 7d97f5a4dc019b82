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
# One temporary directory for everything the build and the suite's processes write to theirs (the package manager's
# work directories, the tests' own, Open MPI's session directories, which a job a test kills leaves behind,
# PyTorch's caches), removed at the end.
suite_tmp=$(mktemp -d /tmp/tessera-suite.XXXXXX)
trap 'rm -rf "$suite_tmp"' EXIT
export TMPDIR="$suite_tmp"
tessera_build --build-tests
swift test --skip-build --disable-swift-testing "$@"
