"""What bench/pytorch_gpt2.py and bench/pytorch_llama.py share: the command line, the bf16 hardware probe, one
training step timed as both define it (forward and cross-entropy under autocast in bf16, backward, AdamW lr 3e-4
betas 0.9/0.95 weight decay 0.1 on matrices, zero_grad), the median, the JSON record and the table."""
import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


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


def param_count(model):
    # named_parameters() yields a shared tensor once, so a tied embedding/LM head counts once.
    return sum(p.numel() for _, p in model.named_parameters())


def parse_args(doc, configs, all_help):
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="all", choices=[*configs, "all"], help=f"size, or all ({all_help})")
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
    return args


def announce(args, extra="", large="L or G"):
    """The info line (stderr with --json) and, in bf16 without bf16 hardware, the note on its slow path."""
    bf16_hw, bf16_why = bf16_hardware()
    info = (f"torch {torch.__version__}, num_threads {torch.get_num_threads()}, "
            f"mkldnn {torch.backends.mkldnn.is_available()}, precision {args.precision}, "
            f"bf16 hardware {bf16_hw} ({bf16_why})" + extra)
    print(info, file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.precision == "bf16" and not bf16_hw:
        print("note: torch reports no bf16 hardware support on this CPU (" + bf16_why + "): its bf16 matmuls "
              "fall back to a slow path (about 1 GFLOP/s), so autocast steps can be 10x or more slower than "
              f"fp32 and a step of size {large} can take minutes"
              + ("; pass --max-seconds S to bound each config's run." if args.max_seconds is None else
                 f"; --max-seconds {args.max_seconds:g} stops each config after the step that crosses it."),
              file=sys.stderr, flush=True)
    return bf16_hw


def train(name, cfg, model, steps, warmup, precision="fp32", max_seconds=None):
    """Times warmup + steps training steps of `model` on fixed random batches; the result record."""
    model.train()
    # Decay matrices only (GPT-2 convention); biases, norms and other 1-D params undecayed.
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
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def report(args, results, columns):
    """Each record as a JSON line (--json, as it comes: `emit`), else a table with the `columns` (key, header, width)
    after the config and precision."""
    if args.json:
        return
    print()
    print(f"{'config':<7} {'prec':<4} " + " ".join(f"{h:>{w}}" for _, h, w in columns)
          + f" {'params':>12} {'median step s':>14} {'tokens/s':>10} {'loss first->last':>18}")
    for r in results:
        mark = "*" if r["stopped_early"] else " "
        print(f"{r['config']:<7} {r['precision']:<4} " + " ".join(f"{r[k]:>{w}}" for k, _, w in columns)
              + f" {r['params']:>12,} {r['median_step_s']:>14.3f} "
              f"{r['tokens_per_s']:>9,.0f}{mark} {r['first_loss']:>8.4f}->{r['last_loss']:<8.4f}")
    print(f"\n({args.steps} timed steps after {args.warmup} warmup; median step time; "
          f"tokens/s = batch*seq / median step)")
    for r in results:
        if r["stopped_early"]:
            print(f"* {r['config']}: stopped early by --max-seconds {args.max_seconds:g} after "
                  f"{r['warmup_done']} warm-up and {r['steps_done']} timed step(s); median of the "
                  f"{'timed' if r['median_of'] == 'timed' else 'warm-up'} steps done")


def emit(args, record):
    if args.json:
        print(json.dumps(record), flush=True)
