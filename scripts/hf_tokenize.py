#!/usr/bin/env python3
"""Encode texts with Hugging Face's `tokenizers` library, to compare with Tessera's tokenizer (docs/tokenizer.md).

    python3 scripts/hf_tokenize.py TOKENIZER_JSON TEXTS_JSON OUT_JSON [--train TEXT_FILE VOCAB_SIZE]

TEXTS_JSON holds a JSON list of strings. Loads TOKENIZER_JSON with tokenizers.Tokenizer.from_file (or, when it is
a directory, with transformers.AutoTokenizer.from_pretrained, reporting its class and bos/eos ids too) and writes
OUT_JSON: {"ids": [[ids of each text]], "decoded": [decode(ids, skip_special_tokens=False) of each],
"version": tokenizers' version}. With --train, first trains tokenizers.ByteLevelBPETokenizer on TEXT_FILE
(vocabulary VOCAB_SIZE, special token <|endoftext|>, min_frequency 2) and saves it as TOKENIZER_JSON.
Needs the `tokenizers` package (scripts/hf_venv.sh makes a venv with transformers, which brings it).
"""
import json
import os
import sys


def main(argv):
    if len(argv) not in (4, 7) or (len(argv) == 7 and argv[4] != "--train"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import tokenizers

    path, texts_path, out_path = argv[1:4]
    if len(argv) == 7:
        trainer = tokenizers.ByteLevelBPETokenizer()
        trainer.train([argv[5]], vocab_size=int(argv[6]), min_frequency=2, special_tokens=["<|endoftext|>"],
                      show_progress=False)
        trainer.save(path)
    with open(texts_path, encoding="utf-8") as f:
        texts = json.load(f)
    result = {"version": tokenizers.__version__}
    if os.path.isdir(path):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(path)
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        decoded = [tokenizer.decode(i, skip_special_tokens=False) for i in ids]
        result.update({"class": type(tokenizer).__name__, "bos_token_id": tokenizer.bos_token_id,
                       "eos_token_id": tokenizer.eos_token_id})
    else:
        tokenizer = tokenizers.Tokenizer.from_file(path)
        ids = [tokenizer.encode(text).ids for text in texts]
        decoded = [tokenizer.decode(i, skip_special_tokens=False) for i in ids]
    result.update({"ids": ids, "decoded": decoded})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
