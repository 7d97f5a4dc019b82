#!/usr/bin/env bash
# The Llama ready job (Configs/llama-fortunes.toml), end to end: install what is missing, build (release),
# train a byte-level BPE tokenizer on the fortunes corpus, prepare token shards (one document per fortune,
# <|endoftext|> before each), train the Llama, sample text from it, and export a Hugging Face LlamaForCausalLM
# directory (runs/llama/hf, with the tokenizer) from its last checkpoint. Extra arguments go to `tessera train`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/setup.sh"
tessera_ready_job
bin="$tessera_root/.build/release/tessera"
mkdir -p runs/llama
if [ ! -s runs/llama/tokenizer.json ]; then
    "$bin" tokenizer train --input data/fortunes.txt --vocab-size 2048 --out runs/llama/tokenizer.json
fi
if [ ! -s data/fortunes-bpe/val_000000.bin ]; then
    # The fortune files themselves: each fortune ends at a line holding only "%".
    mapfile -t files < <(tessera_fortune_files)
    "$bin" prepare --input "${files[@]}" --delimiter '\n%\n' --tokenizer runs/llama/tokenizer.json --out data/fortunes-bpe
fi
"$here/tessera-run" Configs/llama-fortunes.toml "$@"
"$bin" generate --checkpoint runs/llama/checkpoints --prompt "Q: " --tokens 80 --stop-at-eot
"$bin" export --hf runs/llama/hf --checkpoint runs/llama/checkpoints
