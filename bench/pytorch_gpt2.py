#!/usr/bin/env python3
"""GPT-2 training-step throughput in plain PyTorch on the CPU: the baseline Tessera is compared with.

    python bench/pytorch_gpt2.py --config all --threads 2 [--steps 5] [--warmup 2] [--precision fp32|bf16]
                                 [--max-seconds S] [--json]

The model is written out plainly (no nn.Transformer, no torch.compile): token and position embeddings,
pre-LN blocks with a fused q/k/v projection (c_attn, with bias), causal attention through
F.scaled_dot_product_attention(is_causal=True), an output projection (c_proj), a 4x MLP with tanh-GELU,
a final LayerNorm and an LM head tied to the token embedding. No dropout, eager mode.

--precision fp32 (default): everything in fp32. --precision bf16: PyTorch's CPU mixed precision, i.e. the
forward and the loss run under torch.autocast("cpu", dtype=torch.bfloat16) (autocast runs matmuls/linear
and attention in bf16 and keeps the ops on its fp32 list in fp32); the parameters, their gradients, AdamW
and its state stay fp32, and backward runs outside the autocast block, as PyTorch recommends.

One step = forward, cross-entropy loss, backward, AdamW step (lr 3e-4, betas 0.9/0.95, weight decay 0.1),
zero_grad. Data are random tokens from a fixed seed. Reported per config: parameter count (wte counted
once, wpe included), median step time over the timed steps, and tokens/s = batch * seq / median step time.

--max-seconds S: once the steps done so far (warm-up included) have taken more than S seconds in all, stop
after the current step and report the median of the timed steps done ("steps_done" < "steps",
"stopped_early": true), or of the warm-up steps done when no timed step was reached ("median_of":
"warmup"). A step is never interrupted. Without bf16 hardware (AVX512_BF16/AMX), PyTorch's bf16 matmul on
the CPU runs at about 1 GFLOP/s, so an autocast step of size L takes many minutes.
"""
import math
import sys

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
import pytorch_common as common  # noqa: E402  (the harness both scripts share)
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # name: vocab, d_model, layers, heads, seq, batch
    "S": dict(vocab=256, d=128, layers=4, heads=4, seq=256, batch=8),
    "M": dict(vocab=256, d=256, layers=6, heads=8, seq=512, batch=8),
    "L": dict(vocab=8192, d=512, layers=8, heads=8, seq=1024, batch=4),
    # GPT-2 124M's shape on a short sequence (wpe sized to seq, as in Tessera's size G).
    "G": dict(vocab=50257, d=768, layers=12, heads=12, seq=64, batch=4),
}


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d, bias=True)
        self.attn_proj = nn.Linear(d, d, bias=True)  # attention c_proj
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d, bias=True)
        self.mlp_proj = nn.Linear(4 * d, d, bias=True)  # MLP c_proj

    def forward(self, x):
        B, T, C = x.shape
        h = self.heads
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, h, C // h).transpose(1, 2)
        k = k.view(B, T, h, C // h).transpose(1, 2)
        v = v.view(B, T, h, C // h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT2(nn.Module):
    def __init__(self, vocab, d, layers, heads, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        # GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * layers).
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def main():
    args = common.parse_args(__doc__, CONFIGS, "S, M, L, G")
    bf16_hw = common.announce(args)
    results = []
    for name in (list(CONFIGS) if args.config == "all" else [args.config]):
        cfg = CONFIGS[name]
        torch.manual_seed(1234)
        model = GPT2(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["seq"])
        r = common.train(name, cfg, model, args.steps, args.warmup, args.precision, args.max_seconds)
        r["bf16_hw"] = bf16_hw
        results.append(r)
        common.emit(args, r)
    common.report(args, results, [("vocab", "vocab", 6), ("d", "d", 4), ("layers", "L", 2), ("heads", "H", 2),
                                   ("seq", "seq", 5), ("batch", "batch", 5)])


if __name__ == "__main__":
    main()
