#!/usr/bin/env bash
# Tessera against PyTorch CPU eager on the benchmark sizes, in fp32 and/or bf16 mixed precision, each
# precision measured one after the other in one invocation (Tessera, then PyTorch), with the ratios.
#
#   bench/compare.sh [--threads N] [--steps N] [--warmup N] [--sizes S,M,L,G] [--precision fp32|bf16|both]
#                    [--max-seconds S]
#
# fp32: `tessera bench --precision fp32` against PyTorch eager fp32. bf16: `tessera bench --precision bf16`
# against PyTorch autocast (forward and loss under torch.autocast("cpu", bfloat16), fp32 parameters and
# AdamW). --max-seconds (default 600) is passed to each PyTorch run (one per size and precision): it stops
# after the step that crosses it and reports the median of the steps done (marked * in the tables).
# PyTorch runs through bench/pytorch.sh (TESSERA_HF_VENV=DIR uses that venv instead of bench/.venv).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
threads=2; steps=5; warmup=2; sizes=S,M,L,G; precision=both; max_seconds=600
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --max-seconds) max_seconds=$2; shift 2 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$precision" in
    fp32|bf16) precisions=$precision ;;
    both) precisions="fp32 bf16" ;;
    *) echo "compare.sh: --precision must be fp32, bf16 or both, not '$precision'" >&2; exit 2 ;;
esac
source "$root/Launch/setup.sh"
tessera_mpi_env
tessera_build -c release --product tessera >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
configs=$(echo "$sizes" | tr ',' ' ')
for p in $precisions; do
    echo "== $p: tessera bench --precision $p --sizes $sizes" >&2
    "$root/.build/release/tessera" bench --precision "$p" --sizes "$sizes" --threads "$threads" --steps "$steps" \
        --warmup "$warmup" --json > "$work/tessera.out"
    grep -v '^{' "$work/tessera.out" || true
    grep '^{' "$work/tessera.out" > "$work/tessera-$p.json" || true
    : > "$work/pytorch-$p.json"
    for c in $configs; do
        echo "== $p: PyTorch $c ($([ "$p" = bf16 ] && echo autocast bf16 || echo eager fp32))" >&2
        if ! bash "$here/pytorch.sh" --config "$c" --precision "$p" --threads "$threads" --steps "$steps" \
            --warmup "$warmup" --max-seconds "$max_seconds" --json > "$work/pytorch.out"; then
            echo "compare.sh: PyTorch $c $p failed; its row shows n/a" >&2
        fi
        grep '^{' "$work/pytorch.out" >> "$work/pytorch-$p.json" || true
    done
done
python3 - "$work" "$precisions" "$max_seconds" <<'PY'
import json, os, sys
work, precisions, max_seconds = sys.argv[1], sys.argv[2].split(), sys.argv[3]
# Layers, d_model and seq of each size, for FLOPs/token = 6N + 12·layers·d·seq (N from Tessera's JSON).
SHAPE = {"S": (4, 128, 256), "M": (6, 256, 512), "L": (8, 512, 1024), "G": (12, 768, 64)}

def load(name, key):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return {}
    return {r[key]: r for r in (json.loads(l) for l in open(path) if l.strip())}

t = {p: load(f"tessera-{p}.json", "size") for p in precisions}
pt = {p: load(f"pytorch-{p}.json", "config") for p in precisions}

def ceiling(r, p):
    """(FLOP/s, name) of the product ceiling Tessera measured for precision p."""
    if p == "bf16" and r.get("bf16_flops"):
        return r["bf16_flops"], "bf16"
    return r["sgemm_flops"], "sgemm"

def flops_per_token(s, r):
    if s in SHAPE and "params" in r:
        layers, d, seq = SHAPE[s]
        return 6 * r["params"] + 12 * layers * d * seq
    return r["mfu"] * r["sgemm_flops"] / r["tokens_per_s"]   # unknown size: Tessera's own MFU (vs sgemm)

def ptok(r):
    """PyTorch tokens/s as text, marked * when the run stopped early."""
    if r is None:
        return "n/a"
    return f"{r['tokens_per_s']:.0f}" + ("*" if r.get("stopped_early") else " ")

early = []
for p in precisions:
    tp, pp = t[p], pt[p]
    if not tp:
        print(f"\n{p}: no Tessera results")
        continue
    label = "PyTorch autocast" if p == "bf16" else "PyTorch fp32"
    print(f"\n{p}: Tessera --precision {p} vs {label}")
    print(f"{'size':<5} {'Tessera tok/s':>14} {label + ' tok/s':>23} {'ratio':>7} {'Tessera MFU':>12} {'PyTorch MFU':>12}")
    for s, r in tp.items():
        tt = r["tokens_per_s"]
        c, cname = ceiling(r, p)
        fpt = flops_per_token(s, r)
        q = pp.get(s)
        if q is not None and q.get("stopped_early"):
            early.append((p, s, q))
        ratio = f"{tt / q['tokens_per_s']:>6.2f}x" if q else f"{'n/a':>7}"
        pmfu = f"{100 * fpt * q['tokens_per_s'] / c:>11.1f}%" if q else f"{'n/a':>12}"
        print(f"{s:<5} {tt:>14.0f} {ptok(q):>23} {ratio} {100 * fpt * tt / c:>11.1f}% {pmfu}")
    r0 = next(iter(tp.values()))
    c, cname = ceiling(r0, p)
    extra = f"; sgemm {r0['sgemm_flops'] / 1e9:.1f} GFLOP/s" if cname == "bf16" else ""
    if p == "bf16" and cname != "bf16":
        extra = " (no bf16_flops in Tessera's JSON: against sgemm)"
    print(f"MFU against Tessera's measured {cname} ceiling {c / 1e9:.1f} GFLOP/s{extra} ({r0['threads']} threads); "
          "both frameworks against the same ceiling.")

if "fp32" in precisions and "bf16" in precisions and t["bf16"]:
    print("\nTessera bf16 vs PyTorch autocast (bf16) vs PyTorch fp32 (tokens/s; ratio = Tessera bf16 / other)")
    print(f"{'size':<5} {'Tessera bf16':>13} {'PT autocast':>12} {'PT fp32':>9} {'vs autocast':>12} {'vs PT fp32':>11} "
          f"{'vs Tessera fp32':>16}")
    for s, r in t["bf16"].items():
        tb = r["tokens_per_s"]
        qa, qf, tf = pt["bf16"].get(s), pt["fp32"].get(s), t["fp32"].get(s)
        ra = f"{tb / qa['tokens_per_s']:>11.2f}x" if qa else f"{'n/a':>12}"
        rf = f"{tb / qf['tokens_per_s']:>10.2f}x" if qf else f"{'n/a':>11}"
        rt = f"{tb / tf['tokens_per_s']:>15.2f}x" if tf else f"{'n/a':>16}"
        print(f"{s:<5} {tb:>13.0f} {ptok(qa):>12} {ptok(qf):>9} {ra} {rf} {rt}")

print("\nratio = Tessera tokens/s / PyTorch tokens/s; MFU = (6N + 12·layers·d·seq)·tokens/s / ceiling; "
      "median step time of each framework.")
for p, s, q in early:
    of = "timed" if q.get("median_of") == "timed" else "warm-up"
    print(f"* PyTorch {s} {p}: stopped early by --max-seconds {max_seconds} after {q.get('warmup_done', 0)} "
          f"warm-up and {q.get('steps_done', 0)} timed step(s) of {q.get('steps')}; median of the {of} steps done")
PY
