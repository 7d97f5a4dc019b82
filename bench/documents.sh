#!/usr/bin/env bash
# bench/documents.sh [--link RATE,DELAY] [options] [-- tessera overrides]: the data-aware schedule of variable-length
# documents against the static layouts on 2 ranks (bench/documents.py: options and what it reports). With --link
# (root; e.g. --link 1gbit,1ms) the two ranks run on two network-namespace hosts joined by a link of that rate and
# delay (Launch/netns-hosts), one rank each; otherwise both on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/setup.sh
tessera_mpi_env
if [ "${1:-}" = "--link" ]; then
    rate=${2%%,*} delay=${2#*,}
    shift 2
    dir=$(mktemp -d /tmp/tessera-documents-hosts-XXXXXX)
    trap 'Launch/netns-hosts down "$dir/hosts" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
    Launch/netns-hosts up "$dir/hosts" --hosts 2 --slots 1 --rate "$rate" --delay "$delay" >/dev/null
    echo "bench/documents.sh: 2 namespace hosts, 1 rank each, joined by $rate, $delay"
    Launch/netns-hosts run "$dir/hosts" -- python3 bench/documents.py --hostfile "$dir/hosts/hostfile" \
        --mpirun-args "$(cat "$dir/hosts/mpirun-args")" "$@"
else
    python3 bench/documents.py "$@"
fi
