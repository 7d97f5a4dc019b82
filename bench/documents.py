#!/usr/bin/env python3
"""Variable-length documents on N ranks: the data-aware schedule against the static layouts, measured in one run.

bench/documents.sh [--link RATE,DELAY [--hosts H]] [--ranks N] [--corpora lognormal,fortunes]
                   [--max-lengths 512,1024,2048] [--spread 2] [--rounds 3] [--steps 6] [--batch 4] [--ulysses]
                   [-- tessera overrides...]

For each corpus and maximum sequence length S (training.seq_len; longer documents are split into pieces of S),
each rank holds at most C = S / K tokens (data.max_tokens_per_rank; K = --spread, 2 unless given, at most N): the
longest sequences need K ranks. Every
step draws whole documents up to batch × S × N / 2 tokens (the same per rank for any N; N = 2 by default, a power
of two). The schedules (data.schedule), run alternately per round:
  aware      the data-aware scheduler (short sequences whole on one rank, long ones as rings of the size they need)
  ring       static: every sequence over the ring of all N ranks (rows of N·C packed with whole documents)
  ring_dp    (N > K) static: every sequence over a ring of K (the size S needs), rows of K·C dealt round-robin to
             the N / K rings (context × data parallelism of fixed sizes)
  dp         static: plain data parallel, sequences truncated to C, rows packed (trains fewer tokens)
  dp_padded  static: plain data parallel, one sequence per row, truncated or padded to C
  aware_u    (--ulysses) the data-aware scheduler with Ulysses instead of rings for long sequences
  aware_m    (--measured) the data-aware scheduler with weights fitted to measured item times (data.cost_weights)
--schedules a,b,... runs just those (aware first: the ratios are aware's).
Reported per schedule (medians over rounds; steps after the first): tokens/s of trained tokens, step time, the
plan's max/mean over ranks of attention pairs and of tokens, padding, tokens dropped by truncation, bytes a rank
sent over its sequence groups per step (the most any rank sent), the measured max/mean over ranks of compute time and
the mean time waiting in communication, MFU against the sgemm ceiling the job measures at start, the model FLOPs per
trained token (what truncation saves: a schedule that trains the same tokens as another is faster by at most their
ratio at equal MFU), and the weight of an attention pair in tokens the plans used. With more ranks
than cores the timing columns are no figures (the ranks share cores); the plan's columns and the bytes still are.
Corpora: "lognormal" (document lengths lognormal, median 160 bytes, sigma 1.4, up to 16384; seeded) and "fortunes"
(Debian's fortunes package, one document per fortune; apt-get install fortunes). Bytes are tokens (vocab 256).
"""
import argparse, glob, json, math, os, random, shlex, statistics, subprocess, sys, tempfile

SEP = 0x1E  # record separator: the byte before every document (data.document_token)
SCHEDULES = ["aware", "ring", "dp", "dp_padded"]  # and ring_dp with more than 2 ranks


def lognormal_corpus(path, total=3_000_000, median=160, sigma=1.4, longest=16384, seed=7):
    rng = random.Random(seed)
    words = ["the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are",
             "as", "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word"]
    out, n = bytearray(), 0
    while n < total:
        length = min(max(int(median * math.exp(sigma * rng.gauss(0, 1))), 2), longest)
        doc = bytearray([SEP])
        while len(doc) < length:
            doc += (rng.choice(words) + " ").encode()
        out += doc[:length]
        n += length
    open(path, "wb").write(out)


def fortunes_corpus(path):
    files = [f for f in glob.glob("/usr/share/games/fortunes/*") if "." not in os.path.basename(f) and os.path.isfile(f)]
    if not files:
        sys.exit("bench/documents.py: no fortunes in /usr/share/games/fortunes (apt-get install fortunes)")
    out = bytearray()
    for f in sorted(files):
        text = open(f, "rb").read().replace(bytes([SEP]), b" ")
        for doc in text.split(b"\n%\n"):
            if len(doc.strip()) > 1:
                out += bytes([SEP]) + doc.strip() + b"\n"
    open(path, "wb").write(out)


def lengths(path):
    data = open(path, "rb").read()
    starts = [i for i, b in enumerate(data) if b == SEP] + [len(data)]
    return sorted(b - a for a, b in zip(starts, starts[1:]))


def run(args, corpus, S, schedule, metrics, log, overrides):
    C = S // args.spread
    if schedule == "aware_u":
        schedule, overrides = "aware", overrides + ["--data.group_attention", "ulysses"]
    if schedule == "aware_m":
        schedule, overrides = "aware", overrides + ["--data.cost_weights", "measured"]
    launch = ["mpirun", "-np", str(args.ranks)] + (["--bind-to", "none", "--hostfile", args.hostfile] if args.hostfile else [])
    if args.ranks > (os.cpu_count() or 1) and not args.hostfile:
        launch += ["--oversubscribe"]
    cmd = launch + shlex.split(args.mpirun_args) + [args.bin, "train", "Configs/default.toml",
           "--data.train", corpus, "--data.val_fraction", "0.01", "--data.packing", "documents",
           "--data.document_token", str(SEP), "--data.max_tokens_per_rank", str(C), "--data.schedule", schedule,
           "--parallelism.dp", str(args.ranks), "--training.seq_len", str(S), "--model.block_size", str(S),
           "--training.batch_size", str(args.batch * args.ranks // 2), "--training.steps", str(args.steps), "--training.log_every", "1",
           "--training.eval_every", "0", "--sample.tokens", "0", "--training.threads", "1",
           "--checkpoint.every", "0", "--job.output_dir", os.path.dirname(metrics) + "/out",
           "--metrics.path", metrics] + overrides
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"bench/documents.py: {schedule} at S = {S} failed:\n" + open(log).read()[-4000:])
    recs = [json.loads(l) for l in open(metrics) if '"loss"' in l]
    recs = recs[1:]  # the first step warms up
    d = [r["documents"] for r in recs]
    time = sum(r["step_s"] for r in recs)
    return {
        "tok_s": sum(x["tokens"] for x in d) / time,
        "step_ms": 1e3 * statistics.median(r["step_s"] for r in recs),
        "attn": statistics.mean(x["attention_max_mean"] for x in d),
        "tokens": statistics.mean(x["tokens_max_mean"] for x in d),
        "work": statistics.mean(x["work_max_mean"] for x in d),
        "padding": statistics.mean(x["padding"] for x in d),
        "dropped": 1 - sum(x["tokens"] for x in d) / sum(x["sequence_tokens"] for x in d),
        "mib": statistics.mean(r["activations"]["sequence_bytes_max"] for r in recs) / 2**20,
        "mfu": statistics.median(r["mfu"] for r in recs),
        "busy": statistics.mean(r["phases"]["compute_s_max"] / r["phases"]["compute_s_mean"] for r in recs),
        "wait_ms": 1e3 * statistics.mean(r["phases"]["comm_s_mean"] for r in recs),
        "rings": statistics.mean(x["ring_items"] for x in d),
        "items": statistics.mean(x["items"] for x in d),
        "ppt": d[-1].get("pair_per_token", 0.0),  # the last step's weight of a pair in tokens
        "mflop": sum(x["flops"] for x in d) / sum(x["tokens"] for x in d) / 1e6,  # model FLOPs per trained token
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", default="lognormal,fortunes")
    p.add_argument("--max-lengths", default="512,1024,2048")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4, help="token budget per step = batch × max length × ranks / 2")
    p.add_argument("--ranks", type=int, default=2, help="ranks (a power of two)")
    p.add_argument("--spread", type=int, default=2, help="ranks the longest sequence needs: data.max_tokens_per_rank = S / spread")
    p.add_argument("--ulysses", action="store_true", help="also the data-aware schedule with Ulysses groups (aware_u)")
    p.add_argument("--measured", action="store_true", help="also the data-aware schedule with measured weights (aware_m)")
    p.add_argument("--schedules", default="", help="only these schedules (comma-separated; aware among them)")
    p.add_argument("--bin", default=".build/release/tessera")
    p.add_argument("--hostfile", default="", help="run the ranks on these hosts (bench/documents.sh --link sets it)")
    p.add_argument("--mpirun-args", default="", help="extra mpirun options (the multi-host harness's)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit("bench/documents.py: build first: swift build -c release --product tessera")
    if args.ranks < 2 or args.ranks & (args.ranks - 1):
        sys.exit(f"bench/documents.py: --ranks must be a power of two ≥ 2, not {args.ranks}")
    if args.ranks > (os.cpu_count() or 1) and not args.hostfile:
        print(f"bench/documents.py: {args.ranks} ranks on {os.cpu_count()} cores: the timing columns are no figures "
              "(ranks share cores); the plan's columns and the bytes are")
    if args.spread < 2 or args.spread & (args.spread - 1) or args.spread > args.ranks:
        sys.exit(f"bench/documents.py: --spread must be a power of two from 2 to --ranks ({args.ranks}), not {args.spread}")
    schedules = SCHEDULES + (["ring_dp"] if args.ranks > args.spread else []) + (["aware_u"] if args.ulysses else []) \
        + (["aware_m"] if args.measured else [])
    if args.schedules:
        schedules = args.schedules.split(",")
        if "aware" not in schedules:
            sys.exit("bench/documents.py: --schedules must include aware (the ratios are aware's)")
    summary = []
    with tempfile.TemporaryDirectory(prefix="tessera-documents-") as tmp:
        for name in args.corpora.split(","):
            corpus = os.path.join(tmp, name + ".txt")
            {"lognormal": lognormal_corpus, "fortunes": fortunes_corpus}[name](corpus)
            L = lengths(corpus)
            q = lambda f: L[min(int(f * len(L)), len(L) - 1)]
            print(f"\ncorpus {name}: {len(L)} documents, {sum(L)} tokens; length p10 {q(.1)}, median {q(.5)}, "
                  f"p90 {q(.9)}, p99 {q(.99)}, max {L[-1]}")
            for S in [int(x) for x in args.max_lengths.split(",")]:
                res = {s: [] for s in schedules}
                for r in range(args.rounds):
                    for s in schedules:
                        res[s].append(run(args, corpus, S, s, f"{tmp}/{name}-{S}-{s}-{r}.jsonl", f"{tmp}/{name}-{S}-{s}-{r}.log",
                                          args.overrides))
                print(f"  max length {S}, {S // args.spread} tokens per rank, {args.ranks} ranks, budget {args.batch * S * args.ranks // 2} tokens/step, "
                      f"{args.rounds} round(s) of {args.steps - 1} steps (medians):")
                print(f"    {'schedule':<10} {'tok/s':>8} {'step ms':>8} {'attn max/mean':>13} {'tok max/mean':>12} "
                      f"{'padding':>8} {'dropped':>8} {'MiB sent':>9} {'busy max/mean':>13} {'wait ms':>8} {'MFU':>6} {'rings':>6} {'items':>6} {'pair/tok':>9} {'MFLOP/tok':>9}")
                med = {s: {k: statistics.median(x[k] for x in res[s]) for k in res[s][0]} for s in schedules}
                for s in schedules:
                    m = med[s]
                    print(f"    {s:<10} {m['tok_s']:8.0f} {m['step_ms']:8.1f} {m['attn']:13.3f} {m['tokens']:12.3f} "
                          f"{100 * m['padding']:7.1f}% {100 * m['dropped']:7.1f}% {m['mib']:9.2f} {m['busy']:13.3f} {m['wait_ms']:8.1f} {100 * m['mfu']:5.1f}% "
                          f"{m['rings']:6.1f} {m['items']:6.1f} {m['ppt']:9.5f} {m['mflop']:9.2f}")
                ratios = {s: med["aware"]["tok_s"] / med[s]["tok_s"] for s in schedules if s != "aware"}
                # Per round, aware against each static layout of the same round.
                per_round = {s: [res["aware"][r]["tok_s"] / res[s][r]["tok_s"] for r in range(args.rounds)] for s in ratios}
                print("    aware / static tokens/s: " + ", ".join(
                    f"{s} {ratios[s]:.2f}× (rounds {', '.join(f'{x:.2f}' for x in per_round[s])})" for s in ratios))
                summary.append((name, S, ratios, med["aware"]["work"]))
    print("\nsummary (aware tokens/s over each static layout's; aware's planned work max/mean):")
    for name, S, ratios, work in summary:
        print(f"  {name:<10} S {S:>5}: " + ", ".join(f"{s} {v:.2f}×" for s, v in ratios.items()) + f"; work max/mean {work:.3f}")


if __name__ == "__main__":
    main()
