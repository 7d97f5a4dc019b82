#!/usr/bin/env bash
# Tessera against PyTorch CPU eager on the three benchmark sizes, measured one after the other in one
# invocation, with the ratio.    bench/compare.sh [--threads N] [--steps N] [--warmup N] [--sizes S,M,L]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
threads=2; steps=5; warmup=2; sizes=S,M,L
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
source "$root/Launch/setup.sh"
tessera_mpi_env
tessera_build -c release --product tessera >&2
tjson=$(mktemp); pjson=$(mktemp)
tout=$(mktemp)
"$root/.build/release/tessera" bench --sizes "$sizes" --threads "$threads" --steps "$steps" --warmup "$warmup" --json > "$tout"
grep -v '^{' "$tout"
grep '^{' "$tout" > "$tjson"
configs=$(echo "$sizes" | tr ',' ' ')
for c in $configs; do
    bash "$here/pytorch.sh" --config "$c" --threads "$threads" --steps "$steps" --warmup "$warmup" --json | grep '^{' >> "$pjson"
done
python3 - "$tjson" "$pjson" <<'PY'
import json, sys
t = {r["size"]: r for r in map(json.loads, open(sys.argv[1]))}
p = {r["config"]: r for r in map(json.loads, open(sys.argv[2]))}
print()
print(f"{'size':<5} {'Tessera tok/s':>14} {'PyTorch tok/s':>14} {'ratio':>7} {'Tessera MFU':>12} {'PyTorch MFU':>12}")
for s in t:
    if s not in p: continue
    tt, pt = t[s]["tokens_per_s"], p[s]["tokens_per_s"]
    pmfu = t[s]["mfu"] * pt / tt   # same FLOPs/token and the same sgemm ceiling
    print(f"{s:<5} {tt:>14.0f} {pt:>14.0f} {tt / pt:>6.2f}x {100 * t[s]['mfu']:>11.1f}% {100 * pmfu:>11.1f}%")
print(f"\nsgemm ceiling {t[next(iter(t))]['sgemm_flops'] / 1e9:.1f} GFLOP/s ({next(iter(t.values()))['threads']} threads); "
      "MFU = (6N + 12·L·d·seq)·tokens/s / ceiling; median step time of each framework.")
PY
rm -f "$tjson" "$pjson" "$tout"
