import Foundation
import TesseraTraining
import TesseraComm
import TesseraDataParallel
import TesseraKernels
import TesseraModel
import TesseraTimeline

/// `tessera bench-dp` (under mpirun): data-parallel scaling in one run. Rounds alternate between
/// (a) rank 0 training alone on the whole global batch (the other ranks sleep, polling a barrier) and
/// (b) all ranks training the same global batch with data parallelism, through the real Trainer
/// (bucketed allreduce overlapped with backward, or ZeRO-1). Then the gradient reduction alone,
/// blocking, bucket by bucket, gives the communication cost the overlap is measured against.
public enum ScalingBench {
    public struct Options: Sendable {
        public var size = "M", steps = 5, warmup = 1, rounds = 2, threads = 1, bucketMb = 25.0, zero = false, json = false
        public init() {}
    }

    static func config(_ s: BenchSize, dp: Int, o: Options, data: String) -> TesseraConfig {
        var c = BenchScaffold.config("bench-dp", s, threads: o.threads, data: data)
        c.training.microbatches = 1
        c.parallelism.dp = dp; c.parallelism.bucketMb = o.bucketMb; c.parallelism.zero = o.zero ? 1 : 0
        return c
    }

    /// Sleeps (without spinning a core) until every rank reaches this point.
    static func idleBarrier(_ world: Communicator) throws {
        try world.ibarrier(label: "idle barrier").sleepWait(pollMicroseconds: 500, watched: false)
    }

    /// The reduction alone: the same buckets, blocking, with nothing to overlap. Seconds (max over ranks).
    static func reductionAlone(_ multi: Trainer, _ world: Communicator) throws -> Double {
        let dpl = multi.dataParallel!
        try world.barrier()
        let t0 = nowNs()
        try dpl.reduceBlocking()
        if dpl.zero { dpl.allgatherParameters(multi.model.params) }
        return try world.allreduce(Double(nowNs() - t0) / 1e9, op: .max)
    }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> String? {
        let s = try BenchSize.named(o.size, among: BenchSize.standard, command: "bench-dp")
        let world = runtime.worldCommunicator, n = runtime.size
        guard n >= 2 else { throw TrainingError("bench-dp compares 1 rank with N: run it under mpirun -np 2 (or more)") }
        guard s.batch % n == 0 else { throw TrainingError("bench-dp: size \(s.name)'s batch \(s.batch) does not divide by \(n) ranks") }
        // Synthetic bytes, written by each rank for itself.
        let path = try BenchScaffold.syntheticText("bench-dp", seed: 3)
        defer { BenchScaffold.removeSyntheticText(path) }

        let single = runtime.rank == 0
            ? try Trainer(config: config(s, dp: 1, o: o, data: path), runtime: nil, options: .init(measurePeak: false)) : nil
        let multi = try Trainer(config: config(s, dp: n, o: o, data: path), runtime: runtime, options: .init(measurePeak: false))
        let peak = runtime.rank == 0 ? SgemmProbe.measure(threads: o.threads).flops : 0
        var singleTimes: [Double] = [], multiTimes: [Double] = [], exposed: [Double] = [], waitMax: [Double] = []
        var step = 0, commTimes: [Double] = []
        for _ in 0..<o.rounds {
            try idleBarrier(world)
            if let single {
                for i in 0..<(o.warmup + o.steps) {
                    let t0 = nowNs(); _ = single.trainStep(i); let dt = Double(nowNs() - t0) / 1e9
                    if i >= o.warmup { singleTimes.append(dt) }
                }
            }
            try idleBarrier(world)
            for i in 0..<(o.warmup + o.steps) {
                let t0 = nowNs(); _ = multi.trainStep(step); let dt = Double(nowNs() - t0) / 1e9
                step += 1
                if i >= o.warmup {
                    multiTimes.append(try world.allreduce(dt, op: .max))
                    // The rank whose backward ends last waits only for communication still in flight: its wait is
                    // the exposed communication. Others also wait for it (load imbalance).
                    let w = Double(multi.dataParallel!.lastWaitNs) / 1e9
                    exposed.append(try world.allreduce(w, op: .min))
                    waitMax.append(try world.allreduce(w, op: .max))
                }
            }
            for _ in 0..<3 { commTimes.append(try reductionAlone(multi, world)) }
        }
        let dpl = multi.dataParallel!
        guard let single else { return nil }
        let tokens = Double(s.batch * s.seq)
        let t1 = BenchScaffold.median(singleTimes), tn = BenchScaffold.median(multiTimes), comm = BenchScaffold.median(commTimes)
        let wait = BenchScaffold.median(exposed), waitFirst = BenchScaffold.median(waitMax)
        let tps1 = tokens / t1, tpsn = tokens / tn
        let flops = single.model.config.flopsPerToken(seqLen: s.seq) * tokens
        let eff = tpsn / Double(n) / tps1
        let hidden = comm > 0 ? max(0, min(1, 1 - wait / comm)) : 1
        var out: [String] = []
        out.append("tessera bench-dp — size \(s.name) (\(fmt(Double(single.model.config.parameterCount) / 1e6, 2))M parameters), "
                   + "global batch \(s.batch)×\(s.seq), \(o.threads) thread(s) per rank, \(o.rounds) alternating rounds × \(o.steps) steps")
        out.append("gradient reduction: \(dpl.zero ? "ZeRO-1 reduce-scatter + allgather" : "allreduce"), "
                   + "\(dpl.buckets.count) bucket(s) of ≥ \(o.bucketMb) MiB, \(fmt(Double(multi.model.grads.count * 4) / 1e6, 1)) MB of gradients; "
                   + "single-copy: \(MPIRuntime.singleCopyMechanism)")
        out.append("sgemm ceiling, \(o.threads) thread(s): \(fmt(peak / 1e9, 1)) GFLOP/s")
        out.append("")
        out.append("ranks  step ms   tokens/s   tokens/s per rank   MFU per rank   scaling efficiency")
        let row = { (r: Int, t: Double, tps: Double) -> String in
            BenchScaffold.cell("\(r)", 7) + BenchScaffold.cell(fmt(1000 * t, 1), 10) + BenchScaffold.cell(fmt(tps, 0), 11)
                + BenchScaffold.cell(fmt(tps / Double(r), 0), 20) + BenchScaffold.cell(fmt(100 * flops / t / Double(r) / peak, 1) + "%", 15)
                + fmt(100 * (tps / Double(r)) / tps1, 1) + "%"
        }
        out.append(row(1, t1, tps1))
        out.append(row(n, tn, tpsn))
        out.append("")
        out.append("reduction alone (blocking, same buckets, median): \(fmt(1000 * comm, 2)) ms; exposed after backward (rank "
                   + "finishing last): \(fmt(1000 * wait, 2)) ms → \(fmt(100 * hidden, 0))% of the reduction hidden behind backward")
        out.append("wait of the rank finishing first (includes load imbalance): \(fmt(1000 * waitFirst, 2)) ms")
        out.append("scaling efficiency (tokens/s per rank ÷ single-rank tokens/s): \(fmt(100 * eff, 1))%")
        if o.json {
            for (r, t, tps) in [(1, t1, tps1), (n, tn, tpsn)] {
                out.append(BenchScaffold.jsonLine([
                    "bench": "bench-dp", "size": s.name, "ranks": r, "step_s": t, "tokens_per_s": tps,
                    "tokens_per_s_per_rank": tps / Double(r), "mfu_per_rank": flops / t / Double(r) / peak,
                    "scaling_efficiency": tps / Double(r) / tps1, "threads": o.threads, "zero": dpl.zero,
                    "buckets": dpl.buckets.count, "reduction_alone_s": comm, "exposed_s": wait, "wait_first_s": waitFirst,
                    "hidden": hidden]))
            }
        }
        return out.joined(separator: "\n")
    }
}
