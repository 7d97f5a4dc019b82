#!/usr/bin/env python3
"""Reference convergence run in plain PyTorch (fp32, CPU) for Tessera's fortunes setup.

    python bench/convergence/torch_fortunes.py [--steps 700] [--threads 1] [--seed 0]

Byte-level GPT-2 (vocab 256, 4 layers, 4 heads, d 128, block 128) on data/fortunes.txt:
train = first 95% of bytes, val = last 5%. Each step samples batch random windows of seq+1 bytes
uniformly from the train split. AdamW lr 2e-3, betas (0.9, 0.95), eps 1e-8, wd 0.1 on 2-D params
(incl. embeddings), 0 on biases/LayerNorm; grad clip 1.0; 40-step linear warmup (lr*(s+1)/40) then
cosine to 0.1*lr at the final step index. Prints loss / lr / pre-clip grad norm at step 1 and every
25 steps, validation loss (4 batches of evenly spaced windows) every 100 steps and at the end.
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# The same GPT-2 as the speed baseline (bench/pytorch_gpt2.py): one model definition for both scripts.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pytorch_gpt2 import GPT2  # noqa: E402


def lr_at(s, steps, lr, warmup):
    if s < warmup:
        return lr * (s + 1) / warmup
    last = steps - 1
    if last <= warmup:
        return lr
    p = (s - warmup) / (last - warmup)
    return 0.1 * lr + 0.9 * lr * 0.5 * (1 + math.cos(math.pi * p))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "data", "fortunes.txt"))
    ap.add_argument("--steps", type=int, default=700, help="total steps (schedule length)")
    ap.add_argument("--stop", type=int, default=None, help="stop early after this many steps (schedule unchanged)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=40)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    raw = open(args.data, "rb").read()
    data = torch.tensor(list(raw), dtype=torch.long)
    n_train = int(0.95 * len(data))
    train, val = data[:n_train], data[n_train:]
    B, T, V = args.batch, args.seq, 256
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, seed {args.seed}; "
          f"{len(train)} train / {len(val)} val bytes; batch {B} x seq {T}; {args.steps} steps", flush=True)

    model = GPT2(V, 128, 4, 4, 128)
    model.train()
    print(f"params {sum(p.numel() for p in model.parameters()):,}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    gen = torch.Generator().manual_seed(args.seed + 1)
    offs = torch.arange(T + 1)

    def batch_train():
        starts = torch.randint(0, len(train) - T - 1 + 1, (B,), generator=gen)
        w = train[starts[:, None] + offs]
        return w[:, :-1], w[:, 1:]

    n_val = 4 * B
    val_starts = torch.linspace(0, len(val) - T - 1, n_val).long()

    @torch.no_grad()
    def val_loss():
        model.eval()
        tot = 0.0
        for i in range(4):
            w = val[val_starts[i * B:(i + 1) * B, None] + offs]
            tot += F.cross_entropy(model(w[:, :-1]).reshape(-1, V), w[:, 1:].reshape(-1)).item()
        model.train()
        return tot / 4

    stop = args.stop or args.steps
    t0 = time.perf_counter()
    for s in range(stop):
        lr = lr_at(s, args.steps, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch_train()
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        n = s + 1
        if n == 1 or n % 25 == 0 or n == stop:
            line = f"step {n:4d}/{args.steps}  loss {loss.item():.4f}"
            if n % 100 == 0 or n == stop:
                line += f"  val {val_loss():.4f}"
            el = time.perf_counter() - t0
            line += f"  lr {lr:.2e}  norm {norm:.3f}  {el / n * 1000:.0f} ms/step  elapsed {el:.0f}s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
