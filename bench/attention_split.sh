#!/usr/bin/env bash
# bench/attention_split.sh OLD_BINARY [NEW_BINARY]: one rank, 2 threads, Llama with one key/value head, batch 1 ×
# 1024 tokens (fewer (batch row, key/value head) pairs than threads: the attention backward splits by key blocks);
# median step time of 5 steps after the first, the two binaries alternately, 3 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=${2:-.build/release/tessera}
d=$(mktemp -d /tmp/tessera-attention-split-XXXXXX)
trap 'rm -rf "$d"' EXIT
for round in 1 2 3; do
    for which in old new; do
        bin=$old; [ "$which" = new ] && bin=$new
        "$bin" train Configs/default.toml --model.family llama --model.n_kv_head 1 --model.intermediate_size 344 \
            --model.tie_word_embeddings false --training.batch_size 1 --training.seq_len 1024 --model.block_size 1024 \
            --training.threads 2 --training.steps 6 --training.log_every 1 --training.eval_every 0 --sample.tokens 0 \
            --checkpoint.every 0 --job.output_dir "$d/out" --metrics.path "$d/$which-$round.jsonl" > "$d/log" 2>&1 \
            || { tail -5 "$d/log"; exit 1; }
        python3 - "$d/$which-$round.jsonl" "$which" "$round" <<'PY'
import json, statistics, sys
r = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][1:]
print(f"{sys.argv[2]} round {sys.argv[3]}: median step {1e3 * statistics.median(x['step_s'] for x in r):.1f} ms, "
      f"first losses {[round(x['loss'], 5) for x in r[:2]]}")
PY
    done
done
