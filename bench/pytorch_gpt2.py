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
import argparse
import contextlib
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
    # GPT-2 124M's shape on a short sequence (wpe sized to seq, as in Tessera's size G).
    "G": dict(vocab=50257, d=768, layers=12, heads=12, seq=64, batch=4),
}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware():
    """(supported, how it was decided): does torch have fast bf16 matmuls on this CPU (oneDNN with
    AVX512_BF16 or AMX)? Asks torch when it can, else reads /proc/cpuinfo."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch.backends.mkldnn.is_available() is False"
    try:
        ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return ok, f"torch.ops.mkldnn._is_mkldnn_bf16_supported() is {ok}"
    except (AttributeError, RuntimeError):
        flags = cpu_flags() & {"avx512_bf16", "amx_bf16"}
        return bool(flags), ("CPU flags " + ", ".join(sorted(flags)) if flags
                             else "no avx512_bf16/amx_bf16 in /proc/cpuinfo")


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


def bench(name, cfg, steps, warmup, precision="fp32", max_seconds=None):
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

    def autocast():
        if precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    times, warm_times, losses = [], [], []
    elapsed, stopped = 0.0, False
    for i in range(warmup + steps):
        data = batches[i % len(batches)]
        x, y = data[:, :-1], data[:, 1:]
        t0 = time.perf_counter()
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, V), y.reshape(-1))
        loss.backward()  # outside autocast: backward ops run in the dtype their forward ops chose
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        (times if i >= warmup else warm_times).append(dt)
        elapsed += dt
        print(f"  [{name} {precision}] step {i + 1}/{warmup + steps}{' (warmup)' if i < warmup else ''}: "
              f"{dt:.3f} s, loss {losses[-1]:.4f}", file=sys.stderr, flush=True)
        if max_seconds is not None and elapsed > max_seconds and i + 1 < warmup + steps:
            stopped = True
            print(f"  [{name} {precision}] stopping early: {elapsed:.1f} s > --max-seconds {max_seconds:g} "
                  f"after {len(warm_times)} warm-up and {len(times)} timed step(s)", file=sys.stderr, flush=True)
            break

    timed = times or warm_times
    med = statistics.median(timed)
    return {
        "config": name,
        **cfg,
        "precision": precision,
        "params": param_count(model),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "steps_done": len(times),
        "warmup_done": len(warm_times),
        "stopped_early": stopped,
        "median_of": "timed" if times else "warmup",
        "median_step_s": med,
        "min_step_s": min(timed),
        "max_step_s": max(timed),
        "tokens_per_s": B * T / med,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "torch": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="all", choices=[*CONFIGS, "all"], help="size, or all (S, M, L, G)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warmup steps (default 2)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="fp32 (default), or bf16 = forward and loss under torch.autocast('cpu', bfloat16)")
    ap.add_argument("--max-seconds", type=float, default=None, metavar="S",
                    help="per config: stop after the step that brings the total step time (warm-up included) "
                         "over S seconds and report the median of the steps done")
    ap.add_argument("--json", action="store_true", help="print one JSON line per config on stdout")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--steps and --threads must be >= 1, --warmup >= 0")
    if args.max_seconds is not None and args.max_seconds <= 0:
        ap.error("--max-seconds must be > 0")

    torch.set_num_threads(args.threads)
    bf16_hw, bf16_why = bf16_hardware()
    info = (f"torch {torch.__version__}, num_threads {torch.get_num_threads()}, "
            f"mkldnn {torch.backends.mkldnn.is_available()}, precision {args.precision}, "
            f"bf16 hardware {bf16_hw} ({bf16_why})")
    print(info, file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.precision == "bf16" and not bf16_hw:
        print("note: torch reports no bf16 hardware support on this CPU (" + bf16_why + "): its bf16 matmuls "
              "fall back to a slow path (about 1 GFLOP/s), so autocast steps can be 10x or more slower than "
              "fp32 and a step of size L or G can take minutes"
              + ("; pass --max-seconds S to bound each config's run." if args.max_seconds is None else
                 f"; --max-seconds {args.max_seconds:g} stops each config after the step that crosses it."),
              file=sys.stderr, flush=True)

    names = list(CONFIGS) if args.config == "all" else [args.config]
    results = []
    for name in names:
        r = bench(name, CONFIGS[name], args.steps, args.warmup, args.precision, args.max_seconds)
        r["mkldnn"] = torch.backends.mkldnn.is_available()
        r["bf16_hw"] = bf16_hw
        results.append(r)
        if args.json:
            print(json.dumps(r), flush=True)

    if not args.json:
        print()
        print(f"{'config':<6} {'prec':<4} {'vocab':>6} {'d':>4} {'L':>2} {'H':>2} {'seq':>5} {'batch':>5} "
              f"{'params':>12} {'median step s':>14} {'tokens/s':>10} {'loss first->last':>18}")
        for r in results:
            mark = "*" if r["stopped_early"] else " "
            print(f"{r['config']:<6} {r['precision']:<4} {r['vocab']:>6} {r['d']:>4} {r['layers']:>2} "
                  f"{r['heads']:>2} {r['seq']:>5} {r['batch']:>5} {r['params']:>12,} {r['median_step_s']:>14.3f} "
                  f"{r['tokens_per_s']:>9,.0f}{mark} {r['first_loss']:>8.4f}->{r['last_loss']:<8.4f}")
        print(f"\n({args.steps} timed steps after {args.warmup} warmup; median step time; "
              f"tokens/s = batch*seq / median step)")
        for r in results:
            if r["stopped_early"]:
                print(f"* {r['config']}: stopped early by --max-seconds {args.max_seconds:g} after "
                      f"{r['warmup_done']} warm-up and {r['steps_done']} timed step(s); median of the "
                      f"{'timed' if r['median_of'] == 'timed' else 'warm-up'} steps done")


if __name__ == "__main__":
    main()
