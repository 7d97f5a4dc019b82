import Foundation
import TesseraComm
import TesseraKernels
import TesseraModel
import TesseraSequenceParallel
import TesseraTimeline

/// `tessera bench-sp` (under mpirun with ring × ulysses ranks): sequence-parallel training steps of the
/// size-M model (batch 1) at several sequence lengths through the real trainer. Per length: step time,
/// the ring's waits against its communication alone (the share hidden behind attention), attention
/// bytes each rank sends against the theory, per-rank attention work balance and activation memory.
/// `--budget-mib X` instead plans the longest sequence each layout trains within X MiB of activations
/// per rank (from the allocation formulas, no run).
public enum SequenceBench {
    public struct Options: Sendable {
        public var ring = 1, ulysses = 1, seqs = [1024, 2048, 4096], steps = 3, warmup = 1, threads = 1
        public var budgetMiB: Double? = nil
        public init() {}
    }

    static let model = ModelConfig(vocabSize: 256, nLayer: 6, nHead: 8, dModel: 256, blockSize: 1024)

    static func config(seq: Int, o: Options, data: String) -> TesseraConfig {
        var c = TesseraConfig()
        c.job.name = "bench-sp"
        c.model = model; c.model.blockSize = seq
        c.training.batchSize = 1; c.training.seqLen = seq; c.training.steps = 1_000_000
        c.training.threads = o.threads; c.training.evalEvery = 0
        c.data.format = "text"; c.data.train = data; c.data.valFraction = 0.01
        c.sample.tokens = 0
        c.parallelism.ring = o.ring; c.parallelism.ulysses = o.ulysses
        return c
    }

    /// Attention bytes one rank sends per step (one micro-batch of `batch` sequences), by the formulas in
    /// docs/sequence-parallel.md.
    public static func theoryBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, dModel c: Int, batch: Int = 1) -> Double {
        var bytes = 0.0
        if r > 1 {
            let block = Double(batch * (seq / r) * 2 * (c / u) * 4)
            bytes += Double(layers * 3 * (r - 1)) * block
        }
        if u > 1 {
            let tl = Double(seq / (r * u))
            bytes += Double(layers) * 8 * Double(u - 1) / Double(u) * Double(batch) * tl * Double(c) * 4
        }
        return bytes
    }

    static func median(_ x: [Double]) -> Double { let s = x.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> String? {
        if let budget = o.budgetMiB { return runtime.rank == 0 ? plan(budgetMiB: budget) : nil }
        guard runtime.size == o.ring * o.ulysses else {
            throw TrainingError("bench-sp: --ring \(o.ring) × --ulysses \(o.ulysses) needs mpirun -np \(o.ring * o.ulysses), this job has \(runtime.size)")
        }
        let path = NSTemporaryDirectory() + "tessera-bench-sp-\(getpid()).txt"
        var rng = SplitMix64(seed: 5)
        FileManager.default.createFile(atPath: path, contents: Data((0..<(1 << 20)).map { _ in UInt8(32 + rng.next() % 95) }))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let world = runtime.worldCommunicator
        var out = ["tessera bench-sp — model M (6 layers, d 256, 8 heads), batch 1, ring \(o.ring) × ulysses \(o.ulysses) "
                   + "= \(runtime.size) rank(s), \(o.threads) thread(s) per rank, median of \(o.steps) steps", ""]
        out.append("seq     step ms   tok/s    exposed fwd/bwd ms (waits)     ring alone fwd/bwd ms   hidden fwd/bwd   "
                   + "sent MB/rank (theory)   attn work max/mean   activations MiB/rank")
        for seq in o.seqs {
            let trainer = try Trainer(config: config(seq: seq, o: o, data: path), runtime: runtime, options: .init(measurePeak: false))
            let sp = trainer.model.attention as? SequenceParallelAttention
            let ring = sp?.core as? RingCore
            let comms = [trainer.mesh?.ring, trainer.mesh?.ulysses].compactMap { $0 }
            var times: [Double] = []
            for i in 0..<(o.warmup + o.steps) {
                if i == o.warmup { ring?.resetCounters(); ring?.recordTiming = true; for c in comms { c.bytesSent = 0 } }
                try world.barrier()
                let t0 = nowNs(); _ = trainer.trainStep(i)
                let dt = try world.allreduce(Double(nowNs() - t0) / 1e9, op: .max)
                if i >= o.warmup { times.append(dt) }
            }
            let steps = Double(o.steps)
            let sent = try world.allreduce(Double(comms.reduce(0) { $0 + $1.bytesSent }) / steps, op: .max)
            let theory = theoryBytes(seq: seq, ring: o.ring, ulysses: o.ulysses, layers: model.nLayer, dModel: model.dModel)
            var waitF = 0.0, waitB = 0.0, maxWaitF = 0.0, maxWaitB = 0.0, aloneF = 0.0, aloneB = 0.0, workRatio = 1.0
            if let ring {
                // Exposed communication: waits after both sides were ready (imbalance excluded), max over ranks.
                let e = try ring.exposedCommunication()
                waitF = try world.allreduce(e.forward / steps, op: .max)
                waitB = try world.allreduce(e.backward / steps, op: .max)
                maxWaitF = try world.allreduce(Double(ring.waitNs.forward) / 1e9 / steps, op: .max)
                maxWaitB = try world.allreduce(Double(ring.waitNs.backward) / 1e9 / steps, op: .max)
                let alone = try ring.exchangeAlone(batch: 1, heads: model.nHead / o.ulysses, layers: model.nLayer)
                aloneF = try world.allreduce(alone.forward, op: .max); aloneB = try world.allreduce(alone.backward, op: .max)
                let w = ring.forwardFlops / steps
                let wMax = try world.allreduce(w, op: .max), wSum = try world.allreduce(w, op: .sum)
                workRatio = wMax / (wSum / Double(runtime.size))
            }
            let acts = Double(trainer.acts!.totalBytes + (sp?.extraBytes ?? 0)) / 1_048_576
            let actsMax = try world.allreduce(acts, op: .max)
            let planned = plannedBytes(seq: seq, ring: o.ring, ulysses: o.ulysses) / 1_048_576
            let t = median(times)
            func pct(_ wait: Double, _ alone: Double) -> String { alone > 0 ? fmt(100 * max(0, 1 - wait / alone), 0) + "%" : "–" }
            let row = "\(seq)".padding(toLength: 8, withPad: " ", startingAt: 0)
                + fmt(1000 * t, 0).padding(toLength: 10, withPad: " ", startingAt: 0)
                + fmt(Double(seq) / t, 0).padding(toLength: 9, withPad: " ", startingAt: 0)
                + (ring != nil ? "\(fmt(1000 * waitF, 1)) / \(fmt(1000 * waitB, 1)) (\(fmt(1000 * maxWaitF, 0))/\(fmt(1000 * maxWaitB, 0)))" : "–").padding(toLength: 27, withPad: " ", startingAt: 0)
                + (ring != nil ? "\(fmt(1000 * aloneF, 1)) / \(fmt(1000 * aloneB, 1))" : "–").padding(toLength: 24, withPad: " ", startingAt: 0)
                + (ring != nil ? "\(pct(waitF, aloneF)) / \(pct(waitB, aloneB))" : "–").padding(toLength: 17, withPad: " ", startingAt: 0)
                + "\(fmt(sent / 1e6, 2)) (\(fmt(theory / 1e6, 2)))".padding(toLength: 24, withPad: " ", startingAt: 0)
                + fmt(workRatio, 3).padding(toLength: 21, withPad: " ", startingAt: 0)
                + "\(fmt(actsMax, 2)) (planned \(fmt(planned, 2)))"
            out.append(row)
        }
        out.append("")
        out.append("exposed: per step, the part of each wait for a ring message after both sides were ready (the sender had")
        out.append("posted it, this rank was waiting), max over ranks; in brackets all ring waits of the rank waiting most,")
        out.append("which adds waiting for slower ranks (load imbalance). hidden = 1 − exposed ÷ (the same transfers, no compute);")
        out.append("sent = point-to-point and all-to-all bytes of attention per rank per step (max over ranks).")
        return runtime.rank == 0 ? out.joined(separator: "\n") : nil
    }

    /// Planned activation bytes per rank for model M, batch 1, a sequence of `seq` tokens on ring × ulysses ranks:
    /// saved tensors and workspace (linear in tokens, measured on two tiny allocations) plus the
    /// sequence-parallel buffers (`SequenceParallelAttention.plannedBytes`).
    static let gpt = GPTConfig(vocabSize: model.vocabSize, nLayer: model.nLayer, nHead: model.nHead, dModel: model.dModel,
                               blockSize: 1)
    /// Activation bytes = fixed + perToken × tokens, measured once on two small allocations.
    static let activationBytes: (fixed: Double, perToken: Double) = {
        let a1 = Activations(config: gpt, batch: 1, tokens: 64).totalBytes
        let a2 = Activations(config: gpt, batch: 1, tokens: 128).totalBytes
        let perToken = Double(a2 - a1) / 64
        return (Double(a1) - 64 * perToken, perToken)
    }()

    public static func plannedBytes(seq: Int, ring r: Int, ulysses u: Int) -> Double {
        let (fixed, perToken) = activationBytes
        let l = SequenceLayout(seqLen: seq, ring: r, ulysses: u, ringRank: 0, ulyssesRank: 0)
        let extra = r * u > 1 ? SequenceParallelAttention.plannedBytes(heads: gpt.nHead, headDim: gpt.headDim, layout: l,
                                                                     layers: gpt.nLayer, maxBatch: 1) : 0
        return fixed + perToken * Double(l.local) + Double(extra)
    }

    /// The longest sequence each layout can train with at most `budgetMiB` of activations per rank.
    public static func plan(budgetMiB: Double) -> String {
        let budget = budgetMiB * 1_048_576
        func bytes(_ seq: Int, _ r: Int, _ u: Int) -> Double { plannedBytes(seq: seq, ring: r, ulysses: u) }
        var out = ["Longest trainable sequence of model M (batch 1) with at most \(fmt(budgetMiB, 0)) MiB of activations per rank",
                   "(saved tensors, workspace and sequence-parallel buffers; from the allocation formulas):", "",
                   "layout                ranks   longest seq   × single rank   MiB per rank at that length"]
        var single = 0
        for (r, u) in [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (1, 4), (2, 2)] {
            let step = SequenceLayout.tokenMultiple(ring: r, ulysses: u)
            var s = step
            while bytes(s + step, r, u) <= budget { s += step }
            if bytes(s, r, u) > budget { s = 0 }
            if r * u == 1 { single = s }
            let name = r * u == 1 ? "single rank" : u == 1 ? "ring \(r)" : r == 1 ? "ulysses \(u)" : "ring \(r) × ulysses \(u)"
            out.append(name.padding(toLength: 22, withPad: " ", startingAt: 0) + "\(r * u)".padding(toLength: 8, withPad: " ", startingAt: 0)
                       + "\(s)".padding(toLength: 14, withPad: " ", startingAt: 0)
                       + (single > 0 ? fmt(Double(s) / Double(single), 2) : "–").padding(toLength: 16, withPad: " ", startingAt: 0)
                       + fmt(bytes(s, r, u) / 1_048_576, 1))
        }
        return out.joined(separator: "\n")
    }
}
