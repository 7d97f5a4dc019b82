#!/usr/bin/env bash
# bench/placement.sh [--rounds R] [--steps S] [--rate RATE] [--delay DELAY] [-- overrides...]
#
# The placement on two hosts joined by a shaped link (Launch/netns-hosts; root): a dp 2 × pp 2 job whose pipeline
# messages outweigh its gradients, 2 ranks per host, run with parallelism.placement = "rank" (world rank order:
# the pipeline across the link) and "auto" (the job measures the link and puts the pipeline inside the hosts),
# alternately R times; prints each run's median step time and the ratio per round. Defaults: 3 rounds, 8 steps
# (the first 3 not counted), 1gbit, no delay (delays use netem, or Launch/delay-line where the kernel has none). 4 ranks share the
# machine's cores, so the figures show the network's effect, not a cluster's speed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 steps=8 rate=1gbit delay=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --delay) delay=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "usage: bench/placement.sh [--rounds R] [--steps S] [--rate RATE] [--delay DELAY] [-- overrides]" >&2; exit 2 ;;
    esac
done
source Launch/setup.sh
tessera_mpi_env
bin=.build/release/tessera
[ -x "$bin" ] || { echo "build first: swift build -c release --product tessera" >&2; exit 2; }
dir=$(mktemp -d /tmp/tessera-placement-XXXXXX)
trap 'Launch/netns-hosts down "$dir/hosts" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
up=(up "$dir/hosts" --hosts 2 --slots 2 --rate "$rate")
[ -n "$delay" ] && up+=(--delay "$delay")
Launch/netns-hosts "${up[@]}" >/dev/null
head -c 3000000 /dev/urandom | base64 > "$dir/text.txt"
# A small model with long sequences: 4 MiB of activations cross a pipeline boundary per step, 1 MiB of gradients
# are reduced.
job=(Configs/default.toml --data.train "$dir/text.txt" --model.d_model 64 --model.n_head 4 --model.n_layer 4
     --model.block_size 1024 --training.seq_len 1024 --training.batch_size 16 --training.microbatches 4
     --parallelism.dp 2 --parallelism.pp 2 --training.steps "$steps" --training.log_every 1 --training.eval_every 0
     --sample.tokens 0 --training.threads 1 --job.output_dir "$dir/out" "$@")
median() { python3 -c "import json,sys,statistics; s=[json.loads(l)['step_s'] for l in open(sys.argv[1]) if 'step_s' in l]; print(statistics.median(s[3:]))" "$1"; }
declare -A all
echo "bench/placement.sh: 2 hosts × 2 ranks, link $rate${delay:+ $delay}; dp 2 × pp 2; $rounds round(s) of $steps steps"
for r in $(seq 1 "$rounds"); do
    line="round $r:"
    for placement in rank auto; do
        out="$dir/$placement-$r.log" metrics="$dir/$placement-$r.jsonl"
        Launch/netns-hosts run "$dir/hosts" -- env TESSERA_MPIRUN_ARGS="$(cat "$dir/hosts/mpirun-args")" \
            Launch/tessera-run --hostfile "$dir/hosts/hostfile" "${job[@]}" --parallelism.placement "$placement" \
            --metrics.path "$metrics" > "$out" 2>&1 || { cat "$out"; exit 1; }
        if [ "$r" = 1 ]; then grep -E "placement \(|↔|estimated communication|world rank order" "$out" | sed 's/^/  /'; fi
        m=$(median "$metrics"); all[$placement-$r]=$m
        line+=" $placement $(python3 -c "print(f'{$m*1e3:.0f} ms')")"
    done
    line+="; rank/auto $(python3 -c "print(f'{${all[rank-$r]}/${all[auto-$r]}:.2f}')")"
    echo "$line"
done
python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'median rank/auto over {len(v)} round(s): {statistics.median(v):.2f}')" \
    $(for r in $(seq 1 "$rounds"); do python3 -c "print(${all[rank-$r]}/${all[auto-$r]})"; done)
# Where the delay came from the delay line (no netem), how late it released packets: the link's delay jitter.
for f in "$dir"/hosts/delay-*.stats; do
    [ -e "$f" ] || continue
    echo "delay line $(basename "$f" .stats): $(tr '\n' ' ' < "$f")"
done
