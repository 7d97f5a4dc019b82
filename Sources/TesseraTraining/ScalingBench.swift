import Foundation
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
        public var size = "M", steps = 5, warmup = 1, rounds = 2, threads = 1, bucketMb = 25.0, zero = false
        public init() {}
    }

    static func config(_ s: Bench.Size, dp: Int, o: Options, data: String) -> TesseraConfig {
        var c = TesseraConfig()
        c.job.name = "bench-dp"
        c.model = ModelConfig(vocabSize: s.vocab, nLayer: s.layers, nHead: s.heads, dModel: s.d, blockSize: s.seq)
        c.training.batchSize = s.batch; c.training.seqLen = s.seq; c.training.steps = 1_000_000
        c.training.threads = o.threads; c.training.evalEvery = 0; c.training.microbatches = 1
        c.data.format = "text"; c.data.train = data; c.data.valFraction = 0.01
        c.sample.tokens = 0
        c.parallelism.dp = dp; c.parallelism.bucketMb = o.bucketMb; c.parallelism.zero = o.zero ? 1 : 0
        return c
    }

    /// Sleeps (without spinning a core) until every rank reaches this point.
    static func idleBarrier(_ world: Communicator) throws {
        let r = try world.ibarrier(label: "idle barrier")
        while try !r.test() { usleep(500) }
    }

    static func median(_ x: [Double]) -> Double { let s = x.sorted(); return s[s.count / 2] }

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
        guard let s = Bench.sizes.first(where: { $0.name == o.size }) else { throw TrainingError("bench-dp: unknown size '\(o.size)'") }
        let world = runtime.worldCommunicator, n = runtime.size
        guard n >= 2 else { throw TrainingError("bench-dp compares 1 rank with N: run it under mpirun -np 2 (or more)") }
        guard s.batch % n == 0 else { throw TrainingError("bench-dp: size \(s.name)'s batch \(s.batch) does not divide by \(n) ranks") }
        // Synthetic bytes, written by each rank for itself.
        let path = NSTemporaryDirectory() + "tessera-bench-dp-\(getpid()).txt"
        var rng = SplitMix64(seed: 3)
        let bytes = (0..<(1 << 20)).map { _ in UInt8(32 + rng.next() % 95) }
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { try? FileManager.default.removeItem(atPath: path) }

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
        let t1 = median(singleTimes), tn = median(multiTimes), comm = median(commTimes), wait = median(exposed)
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
            "\(r)".padding(toLength: 7, withPad: " ", startingAt: 0)
                + fmt(1000 * t, 1).padding(toLength: 10, withPad: " ", startingAt: 0)
                + fmt(tps, 0).padding(toLength: 11, withPad: " ", startingAt: 0)
                + fmt(tps / Double(r), 0).padding(toLength: 20, withPad: " ", startingAt: 0)
                + (fmt(100 * flops / t / Double(r) / peak, 1) + "%").padding(toLength: 15, withPad: " ", startingAt: 0)
                + fmt(100 * (tps / Double(r)) / tps1, 1) + "%"
        }
        out.append(row(1, t1, tps1))
        out.append(row(n, tn, tpsn))
        out.append("")
        out.append("reduction alone (blocking, same buckets, median): \(fmt(1000 * comm, 2)) ms; exposed after backward (rank "
                   + "finishing last): \(fmt(1000 * wait, 2)) ms → \(fmt(100 * hidden, 0))% of the reduction hidden behind backward")
        out.append("wait of the rank finishing first (includes load imbalance): \(fmt(1000 * median(waitMax), 2)) ms")
        out.append("scaling efficiency (tokens/s per rank ÷ single-rank tokens/s): \(fmt(100 * eff, 1))%")
        return out.joined(separator: "\n")
    }
}
