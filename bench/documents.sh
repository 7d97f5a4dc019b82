#!/usr/bin/env bash
# bench/documents.sh [--link RATE,DELAY [--hosts H] [--slots K]] [options] [-- tessera overrides]: the data-aware
# schedule of variable-length documents against the static layouts (bench/documents.py: options, e.g. --ranks N, and
# what it reports). With --link (root; e.g. --link 1gbit,1ms) the ranks run on H network-namespace hosts (2 unless
# --hosts) of K ranks each (1 unless --slots; --ranks H·K), joined by links of that rate and delay
# (Launch/netns-hosts); otherwise all on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source Launch/setup.sh
tessera_mpi_env
if [ "${1:-}" = "--link" ]; then
    rate=${2%%,*} delay=${2#*,}
    shift 2
    hosts=2 slots=1
    if [ "${1:-}" = "--hosts" ]; then hosts=$2; shift 2; fi
    if [ "${1:-}" = "--slots" ]; then slots=$2; shift 2; fi
    dir=$(mktemp -d /tmp/tessera-documents-hosts-XXXXXX)
    trap 'Launch/netns-hosts down "$dir/hosts" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
    Launch/netns-hosts up "$dir/hosts" --hosts "$hosts" --slots "$slots" --rate "$rate" --delay "$delay" >/dev/null
    echo "bench/documents.sh: $hosts namespace hosts, $slots rank(s) each, joined by $rate, $delay"
    Launch/netns-hosts run "$dir/hosts" -- python3 bench/documents.py --ranks $((hosts * slots)) --hostfile "$dir/hosts/hostfile" \
        --mpirun-args "$(cat "$dir/hosts/mpirun-args")" "$@"
else
    python3 bench/documents.py "$@"
fi
