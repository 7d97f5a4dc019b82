#!/usr/bin/env python3
"""Load a `tessera export --hf DIR` directory with transformers and print its logits as JSON.

    python3 scripts/hf_logits.py DIR IDS [OUT.json]

IDS is a comma-separated list of token ids (one sequence). Writes one JSON object (to OUT.json, else to
standard output): the logits [len(IDS), vocab_size] of AutoModelForCausalLM.from_pretrained(DIR) (GPT2LMHeadModel or LlamaForCausalLM) in float32
(as float64 lists), transformers' loading report (missing / unexpected / mismatched keys), whether the LM head is tied to
the input embeddings,
and the torch and transformers versions. Needs torch and transformers (scripts/hf_venv.sh makes a venv).
"""
import json
import sys


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(argv[1], output_loading_info=True)
    model.eval()
    ids = [int(x) for x in argv[2].split(",")]
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long)).logits[0]
    result = json.dumps({
        "loading_info": {k: sorted(str(x) for x in v) for k, v in info.items()},
        "architecture": type(model).__name__,
        "tied": model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
        "dtype": str(logits.dtype),
        "logits": logits.double().tolist(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    })
    if len(argv) == 4:
        with open(argv[3], "w") as f:
            f.write(result)
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
