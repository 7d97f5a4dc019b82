import Foundation
import TesseraTraining
import TesseraComm
import TesseraKernels
import TesseraModel
import TesseraPipeline
import TesseraTimeline

/// `tessera bench-pp` (under mpirun, one rank per stage): for each schedule and micro-batch count, the real
/// Trainer runs a few steps, and each stage reports the fraction of the pipeline's span it spent idle (not in
/// a forward or backward: waiting for its neighbour, or with nothing to do) against the theory,
/// (p−1)/(m+p−1) for GPipe and 1F1B and (p−1)/(v·m+p−1) interleaved; and the peak number of micro-batches
/// whose activations it held at once with their bytes (1F1B holds at most p, GPipe m).
public enum PipelineBench {
    public struct Options: Sendable {
        public var size = "M", layers = 8, steps = 3, warmup = 1, threads = 1, rounds = 1
        public var microbatches = [1, 2, 4, 8]
        public var schedules = ["gpipe", "1f1b", "interleaved"]
        public var json = false
        public init() {}
    }

    static func config(_ s: BenchSize, o: Options, pp: Int, schedule: String, m: Int, data: String) -> TesseraConfig {
        var c = BenchScaffold.config("bench-pp", s.with(layers: o.layers), threads: o.threads, data: data)
        c.training.microbatches = m
        c.parallelism.pp = pp; c.parallelism.pipelineSchedule = schedule
        c.parallelism.virtualStages = schedule == "interleaved" ? 2 : 1
        return c
    }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> String? {
        let s = try BenchSize.named(o.size, among: BenchSize.standard, command: "bench-pp")
        let world = runtime.worldCommunicator, p = runtime.size
        guard p >= 2 else { throw TrainingError("bench-pp runs one pipeline stage per rank: run it under mpirun -np 2 (or more)") }
        let path = try BenchScaffold.syntheticText("bench-pp", seed: 5)
        defer { BenchScaffold.removeSyntheticText(path) }

        var out: [String] = []
        let gpt = s.with(layers: o.layers).model
        out.append("tessera bench-pp — size \(s.name) with \(o.layers) layers (\(fmt(Double(gpt.parameterCount) / 1e6, 2))M parameters), "
                   + "global batch \(s.batch)×\(s.seq), \(p) stages, \(o.threads) thread(s) per rank, median of \(o.rounds) round(s) × \(o.steps) steps "
                   + "(after \(o.warmup) warm-up)")
        out.append("single-copy: \(MPIRuntime.singleCopyMechanism)")
        out.append("idle = 1 − (time in forwards and backwards) ÷ (the pipeline's span: first stage's start to last stage's end); "
                   + "live = peak micro-batches whose activations a stage held, counting an input already arriving; MiB = its "
                   + "activation pool + workspace; imbalance = slowest stage's busy time ÷ fastest's − 1 (the theory assumes 0); pred = the plan simulated with each "
                   + "stage's measured forward and backward times and free communication (what the schedule alone predicts on these "
                   + "unequal stages), so |Δ| pred is what the engine's communication adds")
        out.append("")
        var header = "schedule     m  v  theory "
        for r in 0..<p { header += "  idle s\(r)" }
        for r in 0..<p { header += "  pred s\(r)" }
        header += "  |Δ| theory  |Δ| pred  imbalance   step ms "
        for r in 0..<p { header += "  live s\(r)" }
        for r in 0..<p { header += "   MiB s\(r)" }
        out.append(header)
        // Rounds go over every configuration in turn, so a slow spell of this machine spreads over all of them.
        struct Cell { var idle: [[Double]]; var predicted: [[Double]]; var imbalance: [Double] = []; var steps: [Double] = []
                      var theory = 0.0; var perStage: [Double] = [] }  // perStage: (peak live, activation MiB) per rank
        var cells: [String: Cell] = [:], order: [(String, Int)] = []
        for round in 0..<o.rounds {
            for schedule in o.schedules {
                for m in o.microbatches {
                    let v = schedule == "interleaved" ? 2 : 1
                    if let problem = PipelinePlanner.problem(schedule: schedule, stages: p, microbatches: m, virtualStages: v) {
                        if round == 0 { out.append("\(BenchScaffold.cell(schedule, 11)) \(m): skipped (\(problem))") }
                        continue
                    }
                    if s.batch % m != 0 || o.layers < p * v { continue }
                    let key = "\(schedule) \(m)"
                    if round == 0 { order.append((schedule, m)) }
                    var cell = cells[key] ?? Cell(idle: Array(repeating: [], count: p), predicted: Array(repeating: [], count: p))
                    let trainer = try Trainer(config: config(s, o: o, pp: p, schedule: schedule, m: m, data: path), runtime: runtime,
                                              options: TrainerOptions(measurePeak: false))
                    let engine = trainer.pipeline!
                    for i in 0..<(o.warmup + o.steps) {
                        try world.barrier()
                        let t0 = nowNs()
                        _ = trainer.trainStep(i)
                        let dt = Double(nowNs() - t0) / 1e9
                        guard i >= o.warmup else { continue }
                        // The pipeline's span: first stage's start to last stage's end (one host, one monotonic clock),
                        // and every stage's busy time.
                        var mine = [-Double(engine.startNs), Double(engine.endNs)], span = [0.0, 0.0]
                        try mine.withUnsafeMutableBufferPointer { b in
                            try span.withUnsafeMutableBufferPointer { try world.allreduce(send: b.baseAddress!, recv: $0.baseAddress!, count: 2, op: .max) }
                        }
                        var busy = [Double(engine.busyNs), Double(engine.forwardNs), Double(engine.backwardNs)]
                        var all = [Double](repeating: 0, count: 3 * p)
                        try busy.withUnsafeMutableBufferPointer { b in
                            try all.withUnsafeMutableBufferPointer { try world.allgather(send: b.baseAddress!, recv: $0.baseAddress!, count: 3) }
                        }
                        let busyAll = (0..<p).map { all[3 * $0] }
                        for r in 0..<p { cell.idle[r].append(1 - busyAll[r] / max(span[0] + span[1], 1)) }
                        cell.imbalance.append((busyAll.max() ?? 0) / max(busyAll.min() ?? 1, 1) - 1)
                        // The same plan on paper with each stage's measured forward and backward time per action
                        // (microseconds) and free communication: what the schedule alone predicts on these stages.
                        let plan = trainer.pipelineLayout!.plan, actions = Double(m * v)
                        let sim = try PipelineSimulation(plan: plan, forwardPerRank: (0..<p).map { max(1, Int(all[3 * $0 + 1] / actions / 1000)) },
                                                         backwardPerRank: (0..<p).map { max(1, Int(all[3 * $0 + 2] / actions / 1000)) })
                        for r in 0..<p { cell.predicted[r].append(sim.idleFraction[r]) }
                        cell.steps.append(try world.allreduce(dt, op: .max))
                    }
                    var live = [Double(engine.peakLive), Double(engine.activationBytes) / 1_048_576], gathered = [Double](repeating: 0, count: 2 * p)
                    try live.withUnsafeMutableBufferPointer { b in
                        try gathered.withUnsafeMutableBufferPointer { try world.allgather(send: b.baseAddress!, recv: $0.baseAddress!, count: 2) }
                    }
                    cell.theory = trainer.pipelineLayout!.plan.theoreticalBubble
                    cell.perStage = gathered
                    cells[key] = cell
                }
            }
        }
        let median = BenchScaffold.median
        var json: [String] = []
        for (schedule, m) in order {
            let cell = cells["\(schedule) \(m)"]!, v = schedule == "interleaved" ? 2 : 1
            var row = BenchScaffold.cell(schedule, 11) + String(format: "%2d %2d  %5.1f%% ", m, v, 100 * cell.theory)
            var worst = 0.0, worstPredicted = 0.0
            for r in 0..<p {
                let idle = median(cell.idle[r])
                row += String(format: "   %5.1f%%", 100 * idle); worst = max(worst, abs(idle - cell.theory))
            }
            for r in 0..<p {
                let predicted = median(cell.predicted[r])
                row += String(format: "   %5.1f%%", 100 * predicted); worstPredicted = max(worstPredicted, abs(median(cell.idle[r]) - predicted))
            }
            row += String(format: "   %5.1f pp   %5.1f pp    %5.1f%%  %8.1f ", 100 * worst, 100 * worstPredicted, 100 * median(cell.imbalance),
                          1000 * median(cell.steps))
            for r in 0..<p { row += String(format: "  %7d", Int(cell.perStage[2 * r])) }
            for r in 0..<p { row += String(format: "  %8.1f", cell.perStage[2 * r + 1]) }
            out.append(row)
            json.append(BenchScaffold.jsonLine([
                "bench": "bench-pp", "schedule": schedule, "microbatches": m, "virtual_stages": v, "stages": p,
                "theory_idle": cell.theory, "idle": (0..<p).map { median(cell.idle[$0]) },
                "predicted_idle": (0..<p).map { median(cell.predicted[$0]) }, "max_dev_theory": worst,
                "max_dev_predicted": worstPredicted, "imbalance": median(cell.imbalance), "step_s": median(cell.steps),
                "live": (0..<p).map { Int(cell.perStage[2 * $0]) }, "activation_mib": (0..<p).map { cell.perStage[2 * $0 + 1] }]))
        }
        out.append("")
        out.append("theory: GPipe and 1F1B (p−1)/(m+p−1), interleaved (p−1)/(v·m+p−1); live: GPipe m; 1F1B p − stage, "
                   + "plus one input arriving on stages that receive: at most p")
        if o.json { out += json }
        return runtime.rank == 0 ? out.joined(separator: "\n") : nil
    }
}
