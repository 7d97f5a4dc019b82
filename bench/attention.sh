#!/usr/bin/env bash
# bench/attention.sh OLD_BINARY [NEW_BINARY] [SIZES]: the attention kernel alone (forward, backward) and whole training
# steps, two builds of `tessera` alternately, 3 rounds, in one run (this VM's speed drifts by ±10%, so only figures
# measured side by side compare). Each round runs `tessera bench --attention --json` (2 threads, median of 3 steps
# after 1 warm-up; the kernel: best of 7 calls) for each binary, the old one first in odd rounds and the new one first
# in even ones; the table gives per size the old/new time ratios. NEW_BINARY defaults to this checkout's release
# build (`swift build -c release --product tessera` first); SIZES to S,M,L,G.
# OLD_BINARY: build the commit to compare with in a worktree, e.g.
#   git worktree add /tmp/old 66dbd85~1 && (cd /tmp/old && swift build -c release --product tessera)
set -euo pipefail
old=$(realpath "${1:?usage: bench/attention.sh OLD_BINARY [NEW_BINARY] [SIZES]}")
new=$(realpath "${2:-$(dirname "$0")/../.build/release/tessera}") sizes=${3:-S,M,L,G}
cd "$(dirname "$0")/.."
d=$(mktemp -d /tmp/tessera-attention-XXXXXX)
trap 'rm -rf "$d"' EXIT
for round in 1 2 3; do
    order="old new"; [ $((round % 2)) -eq 0 ] && order="new old"
    for which in $order; do
        bin=$old; [ "$which" = new ] && bin=$new
        "$bin" bench --sizes "$sizes" --steps 3 --warmup 1 --threads 2 --attention --json > "$d/$which-$round.log" 2>&1 \
            || { tail -5 "$d/$which-$round.log"; exit 1; }
    done
done
python3 - "$d" <<'PY'
import glob, json, os, sys
d = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(d, "*.log"))):
    which, rnd = os.path.basename(path)[:-4].split("-")
    for line in open(path):
        if line.startswith("{"):
            j = json.loads(line)
            runs.setdefault((which, int(rnd)), []).append(j)
def pick(which, rnd, bench, size, key):
    return next(j[key] for j in runs[(which, rnd)] if j["bench"] == bench and j["size"] == size)
sizes = [j["size"] for j in runs[("new", 1)] if j["bench"] == "attention"]
rounds = sorted({r for _, r in runs})
print("per round: old ms / new ms (old ÷ new); forward and backward: the kernel alone; step: a whole training step")
print(f"{'size':6} {'forward':34} {'backward':34} {'step':34}")
for s in sizes:
    cells = []
    for bench, key in (("attention", "forward_s"), ("attention", "backward_s"), ("bench", "step_s")):
        parts = []
        for r in rounds:
            a, b = pick("old", r, bench, s, key), pick("new", r, bench, s, key)
            parts.append(f"{1e3*a:.1f}/{1e3*b:.1f} ({a/b:.2f}×)")
        cells.append("  ".join(parts))
    print(f"{s:6} " + " | ".join(cells))
ceil = [pick(w, r, "bench", sizes[0], "sgemm_flops") / 1e9 for w in ("old", "new") for r in rounds]
print(f"sgemm ceiling over the runs: {min(ceil):.1f}–{max(ceil):.1f} GFLOP/s")
PY
