#!/usr/bin/env python3
"""GPT-2 training-step throughput in plain PyTorch on the CPU: the baseline Tessera is compared with.

    python bench/pytorch_gpt2.py --config all --threads 2 [--steps 5] [--warmup 2] [--json]

The model is written out plainly (no nn.Transformer, no torch.compile): token and position embeddings,
pre-LN blocks with a fused q/k/v projection (c_attn, with bias), causal attention through
F.scaled_dot_product_attention(is_causal=True), an output projection (c_proj), a 4x MLP with tanh-GELU,
a final LayerNorm and an LM head tied to the token embedding. fp32, no dropout, eager mode.

One step = forward, cross-entropy loss, backward, AdamW step (lr 3e-4, betas 0.9/0.95, weight decay 0.1),
zero_grad. Data are random tokens from a fixed seed. Reported per config: parameter count (wte counted
once, wpe included), median step time over the timed steps, and tokens/s = batch * seq / median step time.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # name: vocab, d_model, layers, heads, seq, batch
    "S": dict(vocab=256, d=128, layers=4, heads=4, seq=256, batch=8),
    "M": dict(vocab=256, d=256, layers=6, heads=8, seq=512, batch=8),
    "L": dict(vocab=8192, d=512, layers=8, heads=8, seq=1024, batch=4),
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


def param_count(model):
    # named_parameters() yields a shared tensor once, so the tied wte/lm_head weight counts once.
    return sum(p.numel() for _, p in model.named_parameters())


def bench(name, cfg, steps, warmup):
    torch.manual_seed(1234)
    model = GPT2(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["seq"])
    model.train()
    # Decay matrices only (GPT-2 convention); biases, LayerNorm and embeddings' 1-D params undecayed.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, fused=False,
    )
    gen = torch.Generator().manual_seed(42)
    B, T, V = cfg["batch"], cfg["seq"], cfg["vocab"]
    # A few fixed random batches (inputs and next-token targets), cycled.
    batches = [torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(4)]

    times, losses = [], []
    for i in range(warmup + steps):
        data = batches[i % len(batches)]
        x, y = data[:, :-1], data[:, 1:]
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= warmup:
            times.append(dt)
        print(f"  [{name}] step {i + 1}/{warmup + steps}{' (warmup)' if i < warmup else ''}: "
              f"{dt:.3f} s, loss {losses[-1]:.4f}", file=sys.stderr, flush=True)

    med = statistics.median(times)
    return {
        "config": name,
        **cfg,
        "params": param_count(model),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "median_step_s": med,
        "min_step_s": min(times),
        "max_step_s": max(times),
        "tokens_per_s": B * T / med,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="all", choices=["S", "M", "L", "all"])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warmup steps (default 2)")
    ap.add_argument("--json", action="store_true", help="print one JSON line per config on stdout")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    info = (f"torch {torch.__version__}, num_threads {torch.get_num_threads()}, "
            f"mkldnn {torch.backends.mkldnn.is_available()}")
    print(info, file=sys.stderr if args.json else sys.stdout, flush=True)

    names = ["S", "M", "L"] if args.config == "all" else [args.config]
    results = []
    for name in names:
        r = bench(name, CONFIGS[name], args.steps, args.warmup)
        r["mkldnn"] = torch.backends.mkldnn.is_available()
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)

    if not args.json:
        print()
        print(f"{'config':<6} {'vocab':>6} {'d':>4} {'L':>2} {'H':>2} {'seq':>5} {'batch':>5} "
              f"{'params':>11} {'median step s':>14} {'tokens/s':>10} {'loss first->last':>18}")
        for r in results:
            print(f"{r['config']:<6} {r['vocab']:>6} {r['d']:>4} {r['layers']:>2} {r['heads']:>2} "
                  f"{r['seq']:>5} {r['batch']:>5} {r['params']:>11,} {r['median_step_s']:>14.3f} "
                  f"{r['tokens_per_s']:>10,.0f} {r['first_loss']:>8.4f}->{r['last_loss']:<8.4f}")
        print(f"\n({args.steps} timed steps after {args.warmup} warmup; median step time; "
              f"tokens/s = batch*seq / median step)")


if __name__ == "__main__":
    main()
