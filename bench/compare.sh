#!/usr/bin/env bash
# Tessera against PyTorch CPU eager on the benchmark sizes, in fp32 and/or bf16 mixed precision, each
# precision measured one after the other in one invocation (Tessera, then PyTorch), with the ratios.
#
#   bench/compare.sh [--threads N] [--steps N] [--warmup N] [--sizes S,M,L,G] [--precision fp32|bf16|both]
#                    [--max-seconds S] [--rounds R]
#   bench/compare.sh --sizes S,llama-S,M,llama-M --precision fp32      GPT-2 sizes next to their Llama twins
#
# fp32: `tessera bench --precision fp32` against PyTorch eager fp32. bf16: `tessera bench --precision bf16`
# against PyTorch autocast (forward and loss under torch.autocast("cpu", bfloat16), fp32 parameters and
# AdamW). --max-seconds (default 600) is passed to each PyTorch run (one per size and precision): it stops
# after the step that crosses it and reports the median of the steps done (marked * in the tables).
# PyTorch runs through bench/pytorch.sh (TESSERA_HF_VENV=DIR uses that venv instead of bench/.venv), which
# runs bench/pytorch_gpt2.py for S, M, L, G and bench/pytorch_llama.py for llama-S, llama-M, llama-L, llama-G.
# MFU uses the FLOPs/token of Tessera's JSON row (flops_per_token) when it has one, else 6N + 12·layers·d·seq
# (N = Tessera's params, without the vocab·d embedding table for Llama). When a GPT-2 size and its Llama twin
# (S and llama-S, ...) both ran in a precision, a last table sets their Tessera/PyTorch ratios side by side;
# a size whose parameter counts differ between Tessera and PyTorch gets a warning line.
# --rounds R (default 1): each size is measured R times, Tessera and then PyTorch right after it, size by size (so
# both frameworks see the same state of a noisy machine); the tables show each framework's median over the rounds,
# and every round's ratio.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
threads=2; steps=5; warmup=2; sizes=S,M,L,G; precision=both; max_seconds=600; rounds=1
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --max-seconds) max_seconds=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
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
# PyTorch's names of the sizes (Tessera takes them in any case: s, LLAMA-s, ...).
canon() {
    case "${1,,}" in
        s|m|l|g) echo "${1^^}" ;;
        llama-s|llama-m|llama-l|llama-g) local c="${1: -1}"; echo "llama-${c^^}" ;;
        *) echo "$1" ;;
    esac
}
configs=""
for c in $(echo "$sizes" | tr ',' ' '); do configs="$configs $(canon "$c")"; done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds must be a positive integer, not '$rounds'" >&2; exit 2; }
for p in $precisions; do
    : > "$work/tessera-$p.json"; : > "$work/pytorch-$p.json"
    for round in $(seq 1 "$rounds"); do
        for c in $configs; do
            echo "== $p: round $round/$rounds: tessera bench --precision $p --sizes $c" >&2
            "$root/.build/release/tessera" bench --precision "$p" --sizes "$c" --threads "$threads" --steps "$steps" \
                --warmup "$warmup" --json > "$work/tessera.out"
            # The machine lines (ceilings) once per precision; the size's row every time.
            if [ "$round" = 1 ] && [ "$c" = "$(echo $configs | cut -d' ' -f1)" ]; then grep -v '^{' "$work/tessera.out" || true
            else grep -E "^$c " "$work/tessera.out" || true; fi
            grep '^{' "$work/tessera.out" >> "$work/tessera-$p.json" || true
            echo "== $p: round $round/$rounds: PyTorch $c ($([ "$p" = bf16 ] && echo autocast bf16 || echo eager fp32))" >&2
            if ! bash "$here/pytorch.sh" --config "$c" --precision "$p" --threads "$threads" --steps "$steps" \
                --warmup "$warmup" --max-seconds "$max_seconds" --json > "$work/pytorch.out"; then
                echo "compare.sh: PyTorch $c $p failed; its row shows n/a" >&2
            fi
            grep '^{' "$work/pytorch.out" >> "$work/pytorch-$p.json" || true
        done
    done
done
python3 - "$work" "$precisions" "$max_seconds" <<'PY'
import json, os, sys
work, precisions, max_seconds = sys.argv[1], sys.argv[2].split(), sys.argv[3]
# Layers, d_model, seq and the vocab of an untied embedding table (a lookup: no FLOPs; 0 for GPT-2, whose wte is
# also its LM head) of each size, for FLOPs/token = 6·(N − vocab·d) + 12·layers·d·seq (N from Tessera's JSON),
# used when Tessera's row has no flops_per_token.
SHAPE = {"S": (4, 128, 256, 0), "M": (6, 256, 512, 0), "L": (8, 512, 1024, 0), "G": (12, 768, 64, 0),
         "llama-S": (4, 128, 256, 256), "llama-M": (6, 256, 512, 256), "llama-L": (8, 512, 1024, 8192),
         "llama-G": (12, 768, 64, 50257)}
# GPT-2 size -> its Llama twin (same width, depth, heads, seq and batch).
TWIN = {"S": "llama-S", "M": "llama-M", "L": "llama-L", "G": "llama-G"}

def load(name, key):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return {}
    rows = (json.loads(l) for l in open(path) if l.strip())
    # Tessera's step rows only ("bench": "bench"; --attention would add "bench": "attention" rows of the same sizes).
    # Several rounds of a size: the round with the median tokens/s (the upper middle of an even count), every
    # round's tokens/s kept in "rounds" (in round order).
    groups = {}
    for r in rows:
        if r.get("bench", "bench") == "bench":
            groups.setdefault(r[key], []).append(r)
    out = {}
    for k, rs in groups.items():
        med = sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2]
        out[k] = dict(med, rounds=[r["tokens_per_s"] for r in rs])
    return out

t = {p: load(f"tessera-{p}.json", "size") for p in precisions}
pt = {p: load(f"pytorch-{p}.json", "config") for p in precisions}

def row(rows, s):
    """rows[s], matching the size's name regardless of case (Tessera takes "llama-s" for llama-S)."""
    if s in rows:
        return rows[s]
    return next((r for k, r in rows.items() if k.lower() == s.lower()), None)

def ceiling(r, p):
    """(FLOP/s, name) of the product ceiling Tessera measured for precision p."""
    if p == "bf16" and r.get("bf16_flops"):
        return r["bf16_flops"], "bf16"
    return r["sgemm_flops"], "sgemm"

def flops_per_token(s, r):
    if r.get("flops_per_token"):
        return r["flops_per_token"]
    shape = row(SHAPE, s)
    if shape is not None and "params" in r:
        layers, d, seq, lookup_vocab = shape
        return 6 * (r["params"] - lookup_vocab * d) + 12 * layers * d * seq
    return r["mfu"] * r["sgemm_flops"] / r["tokens_per_s"]   # unknown size: Tessera's own MFU (vs sgemm)

def ptok(r):
    """PyTorch tokens/s as text, marked * when the run stopped early."""
    if r is None:
        return "n/a"
    return f"{r['tokens_per_s']:.0f}" + ("*" if r.get("stopped_early") else " ")

early, warned = [], set()
for p in precisions:
    tp, pp = t[p], pt[p]
    if not tp:
        print(f"\n{p}: no Tessera results")
        continue
    label = "PyTorch autocast" if p == "bf16" else "PyTorch fp32"
    print(f"\n{p}: Tessera --precision {p} vs {label}")
    print(f"{'size':<7} {'Tessera tok/s':>14} {label + ' tok/s':>23} {'ratio':>7} {'Tessera MFU':>12} {'PyTorch MFU':>12}")
    mismatched = []
    for s, r in tp.items():
        tt = r["tokens_per_s"]
        c, cname = ceiling(r, p)
        fpt = flops_per_token(s, r)
        q = row(pp, s)
        if q is not None and q.get("stopped_early"):
            early.append((p, s, q))
        if q is not None and "params" in r and "params" in q and r["params"] != q["params"] and s not in warned:
            warned.add(s)
            mismatched.append((s, r["params"], q["params"]))
        ratio = f"{tt / q['tokens_per_s']:>6.2f}x" if q else f"{'n/a':>7}"
        pmfu = f"{100 * fpt * q['tokens_per_s'] / c:>11.1f}%" if q else f"{'n/a':>12}"
        print(f"{s:<7} {tt:>14.0f} {ptok(q):>23} {ratio} {100 * fpt * tt / c:>11.1f}% {pmfu}")
        if q and len(r["rounds"]) > 1:
            print(f"{'':<7} rounds: " + ", ".join(f"{a:.0f}/{b:.0f} = {a / b:.2f}x" for a, b in zip(r["rounds"], q["rounds"])))
    for s, n_t, n_p in mismatched:
        print(f"warning: {s}: Tessera counts {n_t:,} parameters, PyTorch {n_p:,} (difference {n_t - n_p:+,}): "
              "the two models differ, so their tokens/s are not comparable")
    r0 = next(iter(tp.values()))
    c, cname = ceiling(r0, p)
    extra = f"; sgemm {r0['sgemm_flops'] / 1e9:.1f} GFLOP/s" if cname == "bf16" else ""
    if p == "bf16" and cname != "bf16":
        extra = " (no bf16_flops in Tessera's JSON: against sgemm)"
    print(f"MFU against Tessera's measured {cname} ceiling {c / 1e9:.1f} GFLOP/s{extra} ({r0['threads']} threads); "
          "both frameworks against the same ceiling.")

if "fp32" in precisions and "bf16" in precisions and t["bf16"]:
    print("\nTessera bf16 vs PyTorch autocast (bf16) vs PyTorch fp32 (tokens/s; ratio = Tessera bf16 / other)")
    print(f"{'size':<7} {'Tessera bf16':>13} {'PT autocast':>12} {'PT fp32':>9} {'vs autocast':>12} {'vs PT fp32':>11} "
          f"{'vs Tessera fp32':>16}")
    for s, r in t["bf16"].items():
        tb = r["tokens_per_s"]
        qa, qf, tf = row(pt["bf16"], s), row(pt["fp32"], s), row(t["fp32"], s)
        ra = f"{tb / qa['tokens_per_s']:>11.2f}x" if qa else f"{'n/a':>12}"
        rf = f"{tb / qf['tokens_per_s']:>10.2f}x" if qf else f"{'n/a':>11}"
        rt = f"{tb / tf['tokens_per_s']:>15.2f}x" if tf else f"{'n/a':>16}"
        print(f"{s:<7} {tb:>13.0f} {ptok(qa):>12} {ptok(qf):>9} {ra} {rf} {rt}")

# GPT-2 against its Llama twin, each relative to PyTorch in the same precision. Target: Llama trains at least as
# fast relative to PyTorch as GPT-2 does (Llama ratio >= GPT-2 ratio).
pairs = [(p, g, row(t[p], g), row(t[p], l), row(pt[p], g), row(pt[p], l), l)
         for p in precisions for g, l in TWIN.items() if row(t[p], g) and row(t[p], l)]
if pairs:
    print("\nLlama vs GPT-2, each as Tessera tokens/s / PyTorch tokens/s in the same precision "
          "(target: Llama ratio >= GPT-2 ratio)")
    print("(several rounds: Llama / GPT-2 is the median over the rounds of each round's own quotient, all four runs of a")
    print(" round being minutes apart at most; the per-round quotients follow)")
    print(f"{'prec':<5} {'sizes':<17} {'GPT-2 ratio':>12} {'Llama ratio':>12} {'Llama / GPT-2':>14} {'target':>7}")
    for p, g, tg, tl, qg, ql, l in pairs:
        rg = tg["tokens_per_s"] / qg["tokens_per_s"] if qg else None
        rl = tl["tokens_per_s"] / ql["tokens_per_s"] if ql else None
        cg = f"{rg:>10.2f}x{'*' if qg.get('stopped_early') else ' '}" if qg else f"{'n/a':>12}"
        cl = f"{rl:>10.2f}x{'*' if ql.get('stopped_early') else ' '}" if ql else f"{'n/a':>12}"
        both = rg is not None and rl is not None
        per_round = []
        if both:
            per_round = [(a / b) / (c / d) for a, b, c, d in zip(tl["rounds"], ql["rounds"], tg["rounds"], qg["rounds"])]
        quotient = sorted(per_round)[len(per_round) // 2] if len(per_round) > 1 else (rl / rg if both else None)
        cr = f"{quotient:>14.2f}" if both else f"{'n/a':>14}"
        met = ("met" if quotient >= 1 else "missed") if both else "n/a"
        rounds = "  rounds: " + ", ".join(f"{x:.2f}" for x in per_round) if len(per_round) > 1 else ""
        print(f"{p:<5} {g + ' / ' + l:<17} {cg} {cl} {cr} {met:>7}{rounds}")

print("\nratio = Tessera tokens/s / PyTorch tokens/s; MFU = FLOPs/token·tokens/s / ceiling, FLOPs/token = Tessera's "
      "flops_per_token, else 6N + 12·layers·d·seq (N = Tessera's params; Llama: without its vocab·d embedding table); "
      "median step time of each framework.")
for p, s, q in early:
    of = "timed" if q.get("median_of") == "timed" else "warm-up"
    print(f"* PyTorch {s} {p}: stopped early by --max-seconds {max_seconds} after {q.get('warmup_done', 0)} "
          f"warm-up and {q.get('steps_done', 0)} timed step(s) of {q.get('steps')}; median of the {of} steps done")
PY
