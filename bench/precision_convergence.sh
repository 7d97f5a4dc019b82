#!/usr/bin/env bash
# The default job (Configs/default.toml) trained twice, in fp32 and in bf16, one after the other: validation
# loss every 100 steps side by side and the final difference (issue 15's target: bf16 within 2% of fp32).
#
#   bench/precision_convergence.sh [--eval-every N] [extra tessera train overrides...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
every=100
if [ "${1:-}" = "--eval-every" ]; then every=$2; shift 2; fi
source "$root/Launch/setup.sh"
tessera_install_missing
tessera_mpi_env
tessera_fortunes
cd "$root"
tessera_build -c release --product tessera >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for p in fp32 bf16; do
    echo "== training the default job in $p" >&2
    .build/release/tessera train Configs/default.toml --training.precision "$p" --job.output_dir "$work/$p" \
        --metrics.path "$work/$p.jsonl" --training.eval_every "$every" --checkpoint.every 0 --sample.tokens 0 "$@" >&2
done
python3 - "$work/fp32.jsonl" "$work/bf16.jsonl" <<'PY'
import json, sys
def vals(path):
    return {d["step"]: d["val_loss"] for d in map(json.loads, open(path)) if d.get("val_loss") is not None}
a, b = vals(sys.argv[1]), vals(sys.argv[2])
print(f"{'step':>5} {'fp32 val':>9} {'bf16 val':>9} {'bf16/fp32':>10}")
for s in sorted(a):
    if s in b:
        print(f"{s:>5} {a[s]:>9.4f} {b[s]:>9.4f} {b[s] / a[s]:>10.4f}")
last = max(s for s in a if s in b)
d = (b[last] - a[last]) / a[last]
print(f"final validation loss: bf16 {b[last]:.4f}, fp32 {a[last]:.4f}: {100 * d:+.2f}% "
      f"({'within' if abs(d) <= 0.02 else 'NOT within'} 2%)")
PY
