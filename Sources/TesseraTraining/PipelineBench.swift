import Foundation
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
        public var size = "M", layers = 8, steps = 3, warmup = 1, threads = 1
        public var microbatches = [1, 2, 4, 8]
        public var schedules = ["gpipe", "1f1b", "interleaved"]
        public init() {}
    }

    static func config(_ s: Bench.Size, o: Options, pp: Int, schedule: String, m: Int, data: String) -> TesseraConfig {
        var c = TesseraConfig()
        c.job.name = "bench-pp"
        c.model = ModelConfig(vocabSize: s.vocab, nLayer: o.layers, nHead: s.heads, dModel: s.d, blockSize: s.seq)
        c.training.batchSize = s.batch; c.training.seqLen = s.seq; c.training.steps = 1_000_000
        c.training.threads = o.threads; c.training.evalEvery = 0; c.training.microbatches = m
        c.data.format = "text"; c.data.train = data; c.data.valFraction = 0.01
        c.sample.tokens = 0
        c.parallelism.pp = pp; c.parallelism.pipelineSchedule = schedule
        c.parallelism.virtualStages = schedule == "interleaved" ? 2 : 1
        return c
    }

    static func median(_ x: [Double]) -> Double { let s = x.sorted(); return s.isEmpty ? 0 : s[s.count / 2] }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> String? {
        guard let s = Bench.sizes.first(where: { $0.name == o.size }) else { throw TrainingError("bench-pp: unknown size '\(o.size)'") }
        let world = runtime.worldCommunicator, p = runtime.size
        guard p >= 2 else { throw TrainingError("bench-pp runs one pipeline stage per rank: run it under mpirun -np 2 (or more)") }
        let path = NSTemporaryDirectory() + "tessera-bench-pp-\(getpid()).txt"
        var rng = SplitMix64(seed: 5)
        FileManager.default.createFile(atPath: path, contents: Data((0..<(1 << 20)).map { _ in UInt8(32 + rng.next() % 95) }))
        defer { try? FileManager.default.removeItem(atPath: path) }

        var out: [String] = []
        let gpt = GPTConfig(vocabSize: s.vocab, nLayer: o.layers, nHead: s.heads, dModel: s.d, blockSize: s.seq)
        out.append("tessera bench-pp — size \(s.name) with \(o.layers) layers (\(fmt(Double(gpt.parameterCount) / 1e6, 2))M parameters), "
                   + "global batch \(s.batch)×\(s.seq), \(p) stages, \(o.threads) thread(s) per rank, median of \(o.steps) steps after \(o.warmup)")
        out.append("single-copy: \(MPIRuntime.singleCopyMechanism)")
        out.append("idle = 1 − (time in forwards and backwards) ÷ (the pipeline's span: first stage's start to last stage's end); "
                   + "live = peak micro-batches whose activations a stage held, counting an input already arriving; MiB = its "
                   + "activation pool + workspace")
        out.append("")
        var header = "schedule     m  v  theory "
        for r in 0..<p { header += "  idle s\(r)" }
        header += "  max |Δ|   step ms "
        for r in 0..<p { header += "  live s\(r)" }
        for r in 0..<p { header += "   MiB s\(r)" }
        out.append(header)
        for schedule in o.schedules {
            for m in o.microbatches {
                let v = schedule == "interleaved" ? 2 : 1
                if let problem = PipelinePlanner.problem(schedule: schedule, stages: p, microbatches: m, virtualStages: v) {
                    if runtime.rank == 0 { out.append("\(schedule.padding(toLength: 11, withPad: " ", startingAt: 0)) \(m): skipped (\(problem))") }
                    continue
                }
                if s.batch % m != 0 || o.layers < p * v { continue }
                let trainer = try Trainer(config: config(s, o: o, pp: p, schedule: schedule, m: m, data: path), runtime: runtime,
                                          options: TrainerOptions(measurePeak: false))
                let engine = trainer.pipeline!
                var idle: [Double] = [], steps: [Double] = [], live = 0
                var span = [Double](repeating: 0, count: 2), spans = [Double](repeating: 0, count: 2)
                for i in 0..<(o.warmup + o.steps) {
                    try world.barrier()
                    let t0 = nowNs()
                    _ = trainer.trainStep(i)
                    let dt = Double(nowNs() - t0) / 1e9
                    if i >= o.warmup {
                        // The pipeline's span: first stage's start to last stage's end (one host, one monotonic clock).
                        span = [-Double(engine.startNs), Double(engine.endNs)]
                        try span.withUnsafeMutableBufferPointer { b in
                            try spans.withUnsafeMutableBufferPointer { try world.allreduce(send: b.baseAddress!, recv: $0.baseAddress!, count: 2, op: .max) }
                        }
                        idle.append(1 - Double(engine.busyNs) / max(spans[0] + spans[1], 1))
                        steps.append(try world.allreduce(dt, op: .max))
                        live = max(live, engine.peakLive)
                    }
                }
                var mine = [median(idle), Double(live), Double(engine.activationBytes) / 1_048_576]
                var all = [Double](repeating: 0, count: 3 * p)
                try mine.withUnsafeMutableBufferPointer { m in
                    try all.withUnsafeMutableBufferPointer { try world.allgather(send: m.baseAddress!, recv: $0.baseAddress!, count: 3) }
                }
                let theory = trainer.pipelineLayout!.plan.theoreticalBubble
                var row = schedule.padding(toLength: 11, withPad: " ", startingAt: 0) + String(format: "%2d %2d  %5.1f%% ", m, v, 100 * theory)
                var worst = 0.0
                for r in 0..<p { row += String(format: "   %5.1f%%", 100 * all[3 * r]); worst = max(worst, abs(all[3 * r] - theory)) }
                row += String(format: "   %5.1f pp  %8.1f ", 100 * worst, 1000 * median(steps))
                for r in 0..<p { row += String(format: "  %7d", Int(all[3 * r + 1])) }
                for r in 0..<p { row += String(format: "  %8.1f", all[3 * r + 2]) }
                out.append(row)
            }
        }
        out.append("")
        out.append("theory: GPipe and 1F1B (p−1)/(m+p−1), interleaved (p−1)/(v·m+p−1); live: GPipe m; 1F1B p − stage, "
                   + "plus one input arriving on stages that receive: at most p")
        return runtime.rank == 0 ? out.joined(separator: "\n") : nil
    }
}
