#!/usr/bin/env python3
"""Validates `tessera plan --auto` against real runs: plans CONFIG on N ranks, then runs every layout that fits for a
few steps under mpirun and compares predicted with measured step time (Spearman rank correlation, the first choice
against the fastest measured) and memory per rank (the predicted total against the same total with the activation
peak and the optimizer state the run measured).

usage: python3 bench/plan_validate.py CONFIG --ranks N [--steps S] [--warmup W] [--rounds R] [--limit K] [--out DIR]
                                      [--policies P,P] [--threads T] [--memory-per-rank B] [--hostfile FILE]
                                      [--mpirun-args "..."]
                                      [-- --section.key VALUE ...]
Prints a markdown table and the summary; writes DIR/plan.json, DIR/runs.json. Run from the repository root after
`swift build -c release --product tessera`.
"""
import argparse, json, os, shlex, statistics, subprocess, sys, tempfile, time

def spearman(a, b):
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else 0.0

def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--"); extra = argv[i + 1:]; argv = argv[:i]
    ap = argparse.ArgumentParser()
    ap.add_argument("config"); ap.add_argument("--ranks", type=int, required=True)
    ap.add_argument("--steps", type=int, default=6); ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="run only the first K layouts of the ranking (0: all that fit)")
    ap.add_argument("--out", default=""); ap.add_argument("--hostfile", default="")
    ap.add_argument("--mpirun-args", default="", help="extra mpirun options (e.g. the multi-host harness's)")
    ap.add_argument("--binary", default=".build/release/tessera")
    ap.add_argument("--rounds", type=int, default=1, help="run every layout R times, round-robin; the median of the runs")
    ap.add_argument("--policies", default="", help="plan only these memory policies (plan --auto --policies)")
    ap.add_argument("--memory-per-rank", default="", help="plan under this memory per rank (plan --auto --memory-per-rank): "
                    "runs only the layouts that fit it, among them per-layer policy mixes")
    ap.add_argument("--threads", default="", help="threads per rank the planner calibrates with (plan --auto --threads; "
                    "its default divides a host's cores among the hostfile's slots, which oversubscribed namespace hosts overstate)")
    a = ap.parse_args(argv)
    out = a.out or tempfile.mkdtemp(prefix="tessera-plan-validate-")
    os.makedirs(out, exist_ok=True)
    plan_json = os.path.join(out, "plan.json")
    cmd = [a.binary, "plan", "--auto", a.config, "--ranks", str(a.ranks), "--json", plan_json] + extra
    if a.hostfile:
        cmd += ["--hostfile", a.hostfile]
    if a.policies:
        cmd += ["--policies", a.policies]
    if a.threads:
        cmd += ["--threads", a.threads]
    if a.memory_per_rank:
        cmd += ["--memory-per-rank", a.memory_per_rank]
    if a.hostfile:
        # World rank order, so that the ranks of a stage are the ones this script reads its memory from.
        extra = extra + ["--parallelism.placement", "rank"]
        cmd += ["--parallelism.placement", "rank"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("plan failed:\n" + p.stdout + p.stderr)
    print(p.stdout.splitlines()[0])
    print(f"(plan took {time.time() - t0:.1f} s)")
    plan = json.load(open(plan_json))
    layouts = [l for l in plan["layouts"] if l["fits"]]
    if a.limit:
        layouts = layouts[:a.limit]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    def run_one(i, l, r):
        metrics = os.path.join(out, f"run{i}-{r}.jsonl")
        over = []
        for o in l["overrides"]:
            over += ["--" + o["key"], o["value"]]
        mpirun = ["mpirun", "-np", str(a.ranks), "--bind-to", "none"] + shlex.split(a.mpirun_args)
        if a.hostfile:
            mpirun += ["--hostfile", a.hostfile]
        train = [a.binary, "train", a.config] + extra + over + [
            "--training.steps", str(a.warmup + a.steps), "--training.log_every", "1", "--training.eval_every", "0",
            "--sample.tokens", "0", "--checkpoint.every", "0", "--metrics.path", metrics,
            "--job.output_dir", os.path.join(out, f"out{i}")]
        p = subprocess.run(mpirun + train, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(f"layout {l['layout']}: exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-2000:]}", file=sys.stderr)
            return None
        steps, act, opt, rss, act_ranks = [], 0, 0, 0, []
        for line in open(metrics):
            o = json.loads(line)
            if "step_s" not in o:
                continue
            steps.append(o["step_s"])
            act = max(act, o.get("activations", {}).get("peak_bytes_max", 0))
            act_ranks = o.get("activations", {}).get("peak_bytes", act_ranks)
            opt = max(opt, o.get("optimizer_state_bytes", 0))
            rss = max(rss, o.get("peak_rss_bytes", 0))
        return dict(step=statistics.median(steps[a.warmup:]) if len(steps) > a.warmup else float("nan"),
                    act=act, act_ranks=act_ranks, opt=opt, rss=rss)

    results = {i: [] for i in range(len(layouts))}
    for r in range(a.rounds):
        for i, l in enumerate(layouts):
            x = run_one(i, l, r)
            if x:
                results[i].append(x)
                print(f"  round {r + 1} {i + 1:3d} {l['layout']:<34s} predicted {l['step_s'] * 1e3:8.1f} ms  measured {x['step'] * 1e3:8.1f} ms", flush=True)
    runs = []
    for i, l in enumerate(layouts):
        if not results[i]:
            continue
        last = results[i][-1]
        measured = statistics.median(x["step"] for x in results[i])
        act, act_ranks, opt, rss = last["act"], last["act_ranks"], last["opt"], max(x["rss"] for x in results[i])
        parts = l.get("memory_parts", {})
        # Each stage's predicted total with the activation peak its ranks measured (the metrics list every rank's, in
        # world rank order: stage = rank // (ranks / pp) in the default order) and the optimizer state the run measured
        # in place of their predictions (the optimizer state for stage 0, whose rank 0 reports it); the largest over
        # the stages. (The metrics' optimizer state is AdamW's two moments; under ZeRO-1 the reduced gradient shard is
        # as large as one.)
        value = {o["key"]: o["value"] for o in l["overrides"]}
        pp = int(value.get("parallelism.pp", "1"))
        opt = opt * 3 // 2 if value.get("parallelism.zero") == "1" else opt
        per_stage = a.ranks // pp
        mem_measured = 0
        for s, st in enumerate(l.get("memory_stages", [])):
            stage_act = max(act_ranks[s * per_stage:(s + 1) * per_stage] or [act])
            stage_opt = opt if s == 0 else st["optimizer"]
            mem_measured = max(mem_measured, st["total"] - st["activations"] + stage_act - st["optimizer"] + stage_opt)
        runs.append(dict(layout=l["layout"], predicted_s=l["step_s"], measured_s=measured,
                         measured_rounds=[x["step"] for x in results[i]], predicted_bytes=l["memory_bytes"],
                         measured_bytes=mem_measured, activation_peak=act, predicted_activations=parts.get("activations", 0),
                         optimizer_state=opt, predicted_optimizer=parts.get("optimizer", 0), peak_rss=rss))
    json.dump(runs, open(os.path.join(out, "runs.json"), "w"), indent=1)
    if len(runs) < 2:
        sys.exit("fewer than two layouts ran")
    pred = [r["predicted_s"] for r in runs]; meas = [r["measured_s"] for r in runs]
    rho = spearman(pred, meas)
    fastest = min(meas)
    first = runs[0]
    mem_err = max(abs(r["predicted_bytes"] - r["measured_bytes"]) / r["measured_bytes"] for r in runs)
    print()
    print("| # | layout | predicted ms | measured ms | predicted MiB/rank | measured MiB/rank | activation peak MiB (pred/meas) | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        print(f"| {i + 1} | {r['layout']} | {r['predicted_s'] * 1e3:.1f} | {r['measured_s'] * 1e3:.1f} | "
              f"{r['predicted_bytes'] / 2**20:.1f} | {r['measured_bytes'] / 2**20:.1f} | "
              f"{r['predicted_activations'] / 2**20:.1f} / {r['activation_peak'] / 2**20:.1f} | {r['peak_rss'] / 2**20:.0f} |")
    print()
    print(f"layouts run: {len(runs)}; step-time rank correlation (Spearman): {rho:.3f} (target >= 0.8)")
    print(f"first choice {first['layout']}: measured {first['measured_s'] * 1e3:.1f} ms, fastest measured {fastest * 1e3:.1f} ms "
          f"({runs[meas.index(fastest)]['layout']}): {first['measured_s'] / fastest:.3f}x (target <= 1.10)")
    print(f"memory per rank: largest error {mem_err * 100:.2f}% (target <= 5%)")
    print(f"results in {out}")

if __name__ == "__main__":
    main()
