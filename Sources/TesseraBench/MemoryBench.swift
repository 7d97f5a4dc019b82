import Foundation
import TesseraTraining
import TesseraComm
import TesseraKernels
import TesseraMemory
import TesseraModel

/// `tessera bench-memory`: for each model size, every activation policy trains a few steps of the real
/// Trainer in this one process (rounds interleave the policies, so a slow spell of the machine spreads over
/// all of them), and the table gives per policy: the measured activation peak and the prediction, the cut
/// against keep, the step time against keep, the recomputation time, the offload I/O and the share of it
/// hidden behind compute, and the bytes sent over the sequence-parallel groups (extra over keep: full
/// recomputation re-sends key/value blocks, selective must send none). Under mpirun with --ring or
/// --ulysses the ranks split each sequence.
public enum MemoryBench {
    public struct Options: Sendable {
        public var sizes = ["M", "M-long"]
        public var policies = ["keep", "full", "selective", "offload", "auto"]
        public var steps = 3, warmup = 1, threads = 1, rounds = 2, ring = 1, ulysses = 1
        /// The auto policy's budget: `budgetFraction` of the way from the least plan's predicted peak (every
        /// layer recomputed in full) to keep's, or `budgetMiB` when set.
        public var budgetFraction = 0.5, budgetMiB = 0.0
        public var json = false
        public var offloadDir = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/tessera-bench-offload"
                                                                                 : NSTemporaryDirectory() + "tessera-bench-offload"
        public init() {}
    }

    /// The sizes: config M, and the same model with long sequences (4096 tokens, one per step); XS is for
    /// smoke tests of the command.
    static let sizes = BenchSize.standard + [BenchSize.mLong, BenchSize.xs]

    static func config(_ s: BenchSize, o: Options, policy: String, budget: Int, data: String) -> TesseraConfig {
        var c = BenchScaffold.config("bench-memory", s, threads: o.threads, data: data)
        c.parallelism.ring = o.ring; c.parallelism.ulysses = o.ulysses
        c.memory.policy = policy; c.memory.offloadDir = o.offloadDir
        c.memory.activationBudget = policy == "auto" ? budget : 0
        return c
    }

    struct Cell {
        var steps: [Double] = [], recompute: [Double] = [], io: [Double] = [], wait: [Double] = []
        var peak = 0, predicted = 0, sequenceBytes = 0, layers = "", budget = 0
        /// The planner's predicted extra seconds per step over keep.
        var predictedExtra = 0.0
    }

    public static func run(runtime: MPIRuntime?, options o: Options) throws -> String? {
        let world = runtime?.worldCommunicator
        let ranks = runtime?.size ?? 1
        guard ranks == o.ring * o.ulysses else {
            throw TrainingError("bench-memory: --ring \(o.ring) × --ulysses \(o.ulysses) needs mpirun -np \(o.ring * o.ulysses), found \(ranks) rank(s)")
        }
        let path = try BenchScaffold.syntheticText("bench-memory", seed: 5)
        defer { BenchScaffold.removeSyntheticText(path) }
        // The planner's time model needs the sgemm rate and the tier's bandwidth: measured once here, as the
        // trainer measures them for `auto`.
        let flopRate = SgemmProbe.measure(threads: o.threads).flops
        let bandwidth = try OffloadTier(directory: o.offloadDir, rank: runtime?.rank ?? 0).measureBandwidth()
        var out: [String] = []
        out.append("tessera bench-memory — \(ranks) rank(s) (ring \(o.ring) × Ulysses \(o.ulysses)), \(o.threads) thread(s) per rank, "
                   + "median of \(o.rounds) round(s) × \(o.steps) steps after \(o.warmup) warm-up, all policies in this one run")
        out.append("offload tier: \(o.offloadDir); auto budget: "
                   + (o.budgetMiB > 0 ? "\(fmt(o.budgetMiB, 1)) MiB"
                      : "\(Int(100 * o.budgetFraction))% of the way from the least plan's predicted peak (full everywhere) to keep's"))
        out.append("act = activation memory held (saved tensors + recompute buffer + offload staging; not the backward's "
                   + "gradient workspace), max over ranks; pred = the planner's prediction; cut = keep's act ÷ this act; "
                   + "hidden = 1 − (compute time blocked on the tier) ÷ (the I/O thread's time); seq = bytes per step a rank sends "
                   + "over ring/Ulysses, extra = over keep; Δ ms = step time over keep's, measured and as the auto planner predicts it "
                   + "(sgemm \(fmt(flopRate / 1e9, 0)) GFLOP/s, tier write \(fmt(bandwidth.write / 1e9, 2)) / read \(fmt(bandwidth.read / 1e9, 2)) GB/s)")
        let median = BenchScaffold.median
        var json: [String] = []
        for name in o.sizes {
            let s = try BenchSize.named(name, among: sizes, command: "bench-memory")
            var cells: [String: Cell] = [:]
            var keepPredicted = 0, leastPredicted = 0
            for _ in 0..<o.rounds {
                for policy in o.policies {
                    let budget = o.budgetMiB > 0 ? Int(o.budgetMiB * 1_048_576)
                        : leastPredicted + Int(Double(keepPredicted - leastPredicted) * o.budgetFraction)
                    if policy == "auto" && budget == 0 { continue }  // needs keep's prediction first
                    let trainer = try Trainer(config: config(s, o: o, policy: policy, budget: budget, data: path), runtime: runtime,
                                              options: TrainerOptions(measurePeak: false))
                    if policy == "keep" {
                        keepPredicted = trainer.memory.plan.predictedBytes
                        leastPredicted = trainer.memory.planner.smallest.predictedBytes
                    }
                    var cell = cells[policy] ?? Cell()
                    for i in 0..<(o.warmup + o.steps) {
                        try world?.barrier()
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        _ = trainer.trainStep(i)
                        var dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                        if let world { dt = try world.allreduce(dt, op: .max) }
                        guard i >= o.warmup else { continue }
                        let a = trainer.lastActivation
                        cell.steps.append(dt)
                        cell.recompute.append(a.recomputeSeconds)
                        cell.io.append(Double(a.offload?.ioNs ?? 0) / 1e9)
                        cell.wait.append(Double(a.offload?.waitNs ?? 0) / 1e9)
                    }
                    let summary = trainer.activationSummary()
                    cell.peak = summary.peakBytes.max() ?? 0
                    cell.predicted = summary.predictedBytes.max() ?? 0
                    cell.sequenceBytes = summary.sequenceBytesMax
                    cell.layers = LayerPolicy.describe(trainer.memory.plan.policies)
                    cell.predictedExtra = trainer.memory.costs.planner(flopRate: flopRate, tier: bandwidth)
                        .seconds(trainer.memory.plan.policies)
                    cell.budget = budget
                    cells[policy] = cell
                }
            }
            guard let keep = cells["keep"] else { throw TrainingError("bench-memory: the policies must include keep (the baseline)") }
            let keepStep = median(keep.steps)
            out.append("")
            out.append("size \(s.name): d \(s.d), \(s.layers) layers, \(s.heads) heads, batch \(s.batch) × seq \(s.seq)"
                       + (ranks > 1 ? " (\(s.seq / ranks) tokens per rank)" : ""))
            out.append("policy     layers                       act MiB  pred MiB   cut   step ms  vs keep  Δ ms  pred Δ  recompute ms  I/O ms  "
                       + "waited ms  hidden   seq MiB  extra")
            for policy in o.policies {
                guard let c = cells[policy] else { continue }
                let step = median(c.steps), io = median(c.io), wait = median(c.wait)
                var row = BenchScaffold.cell(policy, 10) + " "
                row += BenchScaffold.cell(c.layers, 27)
                row += mib(c.peak).leftPad(9) + mib(c.predicted).leftPad(10)
                row += (fmt(Double(keep.peak) / Double(max(c.peak, 1)), 2) + "×").leftPad(7)
                row += fmt(1000 * step, 0).leftPad(9) + (fmt(step / keepStep, 2) + "×").leftPad(8)
                row += fmt(1000 * (step - keepStep), 0).leftPad(6) + fmt(1000 * c.predictedExtra, 0).leftPad(8)
                row += fmt(1000 * median(c.recompute), 0).leftPad(14) + fmt(1000 * io, 0).leftPad(8) + fmt(1000 * wait, 0).leftPad(11)
                row += (io > 0 ? fmt(100 * max(0, 1 - wait / io), 0) + "%" : "–").leftPad(8)
                row += mib(c.sequenceBytes).leftPad(10)
                row += (ranks > 1 ? mib(c.sequenceBytes - keep.sequenceBytes) : "–").leftPad(7)
                if policy == "auto" { row += "   (budget \(mib(c.budget)) MiB)" }
                out.append(row)
                json.append(BenchScaffold.jsonLine([
                    "bench": "bench-memory", "size": s.name, "policy": policy, "ranks": ranks, "layers": c.layers,
                    "activation_bytes": c.peak, "predicted_bytes": c.predicted, "cut": Double(keep.peak) / Double(max(c.peak, 1)),
                    "step_s": step, "vs_keep": step / keepStep, "extra_s": step - keepStep, "predicted_extra_s": c.predictedExtra,
                    "recompute_s": median(c.recompute), "io_s": io, "waited_s": wait, "sequence_bytes": c.sequenceBytes,
                    "budget_bytes": policy == "auto" ? c.budget : 0]))
            }
        }
        if o.json { out += json }
        return (runtime?.rank ?? 0) == 0 ? out.joined(separator: "\n") : nil
    }
}
