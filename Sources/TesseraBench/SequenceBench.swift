import Foundation
import TesseraTraining
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
        public var json = false
        public init() {}
    }

    /// Model M with batch 1 and a sequence of `seq` tokens.
    static func size(seq: Int) -> BenchSize {
        try! BenchSize.named("M", among: BenchSize.standard, command: "bench-sp").with(seq: seq, batch: 1)
    }
    static let model = size(seq: 1024).model

    static func config(seq: Int, o: Options, data: String) -> TesseraConfig {
        var c = BenchScaffold.config("bench-sp", size(seq: seq), threads: o.threads, data: data)
        c.parallelism.ring = o.ring; c.parallelism.ulysses = o.ulysses
        return c
    }

    /// Attention bytes one rank sends per step (one micro-batch of `batch` sequences), by the formulas in
    /// docs/sequence-parallel.md. In bf16 the key/value blocks and every all-to-all carry 2 bytes a value; the
    /// ring's dK, dV accumulators stay fp32. `kvWidth`: key/value heads × head dim (grouped-query attention),
    /// `dModel` unless told.
    public static func theoryBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, dModel c: Int, kvWidth: Int? = nil,
                                   batch: Int = 1, precision: Precision = .fp32) -> Double {
        theoryRingBytes(seq: seq, ring: r, ulysses: u, layers: layers, kvWidth: kvWidth ?? c, batch: batch, precision: precision)
            + theoryUlyssesBytes(seq: seq, ring: r, ulysses: u, layers: layers, dModel: c, kvWidth: kvWidth ?? c, batch: batch,
                                 precision: precision)
    }

    public static func theoryRingBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, kvWidth: Int, batch: Int = 1,
                                       precision: Precision = .fp32) -> Double {
        SequenceTraffic.ringBytes(seq: seq, ring: r, ulysses: u, layers: layers, kvWidth: kvWidth, batch: batch, precision: precision)
    }

    public static func theoryUlyssesBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, dModel c: Int, kvWidth: Int,
                                          batch: Int = 1, precision: Precision = .fp32) -> Double {
        SequenceTraffic.ulyssesBytes(seq: seq, ring: r, ulysses: u, layers: layers, dModel: c, kvWidth: kvWidth, batch: batch,
                                     precision: precision)
    }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> String? {
        if let budget = o.budgetMiB { return runtime.rank == 0 ? plan(budgetMiB: budget, json: o.json) : nil }
        guard runtime.size == o.ring * o.ulysses else {
            throw TrainingError("bench-sp: --ring \(o.ring) × --ulysses \(o.ulysses) needs mpirun -np \(o.ring * o.ulysses), this job has \(runtime.size)")
        }
        let path = try BenchScaffold.syntheticText("bench-sp", seed: 5)
        defer { BenchScaffold.removeSyntheticText(path) }
        let world = runtime.worldCommunicator
        var out = ["tessera bench-sp — model M (6 layers, d 256, 8 heads), batch 1, ring \(o.ring) × ulysses \(o.ulysses) "
                   + "= \(runtime.size) rank(s), \(o.threads) thread(s) per rank, median of \(o.steps) steps", ""]
        out.append("seq     step ms   tok/s    exposed fwd/bwd ms (waits)     ring alone fwd/bwd ms   hidden fwd/bwd   "
                   + "sent MB/rank (theory)   attn work max/mean   activations MiB/rank")
        var json: [String] = []
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
            let t = BenchScaffold.median(times)
            func pct(_ wait: Double, _ alone: Double) -> String { alone > 0 ? fmt(100 * max(0, 1 - wait / alone), 0) + "%" : "–" }
            let waits = ring != nil ? "\(fmt(1000 * waitF, 1)) / \(fmt(1000 * waitB, 1)) (\(fmt(1000 * maxWaitF, 0))/\(fmt(1000 * maxWaitB, 0)))" : "–"
            let alone = ring != nil ? "\(fmt(1000 * aloneF, 1)) / \(fmt(1000 * aloneB, 1))" : "–"
            let hidden = ring != nil ? "\(pct(waitF, aloneF)) / \(pct(waitB, aloneB))" : "–"
            var row = BenchScaffold.cell("\(seq)", 8) + BenchScaffold.cell(fmt(1000 * t, 0), 10) + BenchScaffold.cell(fmt(Double(seq) / t, 0), 9)
            row += BenchScaffold.cell(waits, 27) + BenchScaffold.cell(alone, 24) + BenchScaffold.cell(hidden, 17)
            row += BenchScaffold.cell("\(fmt(sent / 1e6, 2)) (\(fmt(theory / 1e6, 2)))", 24) + BenchScaffold.cell(fmt(workRatio, 3), 21)
            row += "\(fmt(actsMax, 2)) (planned \(fmt(planned, 2)))"
            out.append(row)
            json.append(BenchScaffold.jsonLine([
                "bench": "bench-sp", "seq": seq, "ring": o.ring, "ulysses": o.ulysses, "ranks": runtime.size, "step_s": t,
                "tokens_per_s": Double(seq) / t, "exposed_forward_s": waitF, "exposed_backward_s": waitB,
                "ring_alone_forward_s": aloneF, "ring_alone_backward_s": aloneB, "sent_mb": sent / 1e6, "theory_mb": theory / 1e6,
                "work_max_over_mean": workRatio, "activation_mib": actsMax, "planned_mib": planned]))
        }
        out.append("")
        out.append("exposed: per step, the part of each wait for a ring message after both sides were ready (the sender had")
        out.append("posted it, this rank was waiting), max over ranks; in brackets all ring waits of the rank waiting most,")
        out.append("which adds waiting for slower ranks (load imbalance). hidden = 1 − exposed ÷ (the same transfers, no compute);")
        out.append("sent = point-to-point and all-to-all bytes of attention per rank per step (max over ranks).")
        if o.json { out += json }
        return runtime.rank == 0 ? out.joined(separator: "\n") : nil
    }

    /// Planned activation bytes per rank for model M, batch 1, a sequence of `seq` tokens on ring × ulysses ranks:
    /// saved tensors and workspace (linear in tokens, measured on two tiny allocations) plus the
    /// sequence-parallel buffers (`SequenceParallelAttention.plannedBytes`).
    static let gpt = size(seq: 1).model
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
    public static func plan(budgetMiB: Double, json: Bool = false) -> String {
        let budget = budgetMiB * 1_048_576
        func bytes(_ seq: Int, _ r: Int, _ u: Int) -> Double { plannedBytes(seq: seq, ring: r, ulysses: u) }
        var out = ["Longest trainable sequence of model M (batch 1) with at most \(fmt(budgetMiB, 0)) MiB of activations per rank",
                   "(saved tensors, workspace and sequence-parallel buffers; from the allocation formulas):", "",
                   "layout                ranks   longest seq   × single rank   MiB per rank at that length"]
        var single = 0, lines: [String] = []
        for (r, u) in [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (1, 4), (2, 2)] {
            let step = SequenceLayout.tokenMultiple(ring: r, ulysses: u)
            var s = step
            while bytes(s + step, r, u) <= budget { s += step }
            if bytes(s, r, u) > budget { s = 0 }
            if r * u == 1 { single = s }
            let name = r * u == 1 ? "single rank" : u == 1 ? "ring \(r)" : r == 1 ? "ulysses \(u)" : "ring \(r) × ulysses \(u)"
            out.append(BenchScaffold.cell(name, 22) + BenchScaffold.cell("\(r * u)", 8) + BenchScaffold.cell("\(s)", 14)
                       + BenchScaffold.cell(single > 0 ? fmt(Double(s) / Double(single), 2) : "–", 16)
                       + fmt(bytes(s, r, u) / 1_048_576, 1))
            lines.append(BenchScaffold.jsonLine(["bench": "bench-sp", "budget_mib": budgetMiB, "ring": r, "ulysses": u, "ranks": r * u,
                                                 "longest_seq": s, "mib_per_rank": bytes(s, r, u) / 1_048_576]))
        }
        return (out + (json ? lines : [])).joined(separator: "\n")
    }
}
