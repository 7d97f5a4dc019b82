import Foundation
import TesseraTraining
import TesseraComm
import TesseraKernels

/// `tessera bench-checkpoint`: what a checkpoint costs training, lazy against sync, in one run. For each
/// model size, three modes train the same steps with the real Trainer in this process (rounds interleave
/// them): no checkpoints, sync and lazy saves at step `every` (one checkpoint in the timed window, whose
/// background work finishes inside it). Per mode: the time training was blocked by the checkpoint (longest
/// rank), the time to durable, and the window's wall time; the extra time over no checkpoints, divided by
/// `every` steps of the no-checkpoint run, is the slowdown of checkpointing every `every` steps. Under
/// mpirun -np 2 the ranks are data-parallel replicas with ZeRO-1, so both write half of the state.
public enum CheckpointBench {
    public struct Options: Sendable {
        public var sizes = ["M", "L"]
        public var every = 10, after = 3, warmup = 1, threads = 1, rounds = 2
        public var zero = true, json = false
        public var dir = NSTemporaryDirectory() + "tessera-bench-checkpoint"
        public init() {}
    }

    static let sizes = BenchSize.standard + [BenchSize.xs]

    struct Cell {
        var window: [Double] = [], blocked: [Double] = [], durable: [Double] = [], cpu: [Double] = [], bytes = 0
    }

    public static func run(runtime: MPIRuntime?, options o: Options) throws -> String? {
        let world = runtime?.worldCommunicator
        let ranks = runtime?.size ?? 1, rank = runtime?.rank ?? 0
        let path = try BenchScaffold.syntheticText("bench-checkpoint", seed: 7)
        defer { BenchScaffold.removeSyntheticText(path) }
        let modes = ["none", "sync", "lazy"]
        let steps = o.warmup + o.every + o.after
        var out: [String] = []
        out.append("tessera bench-checkpoint — \(ranks) rank(s)" + (ranks > 1 ? " (dp \(ranks)" + (o.zero ? " + ZeRO-1)" : ")") : "")
                   + ", \(o.threads) thread(s) per rank, checkpoints in \(o.dir)")
        out.append("window = wall time of steps \(o.warmup + 1)–\(steps) (max over ranks), which hold one checkpoint (after step "
                   + "\(o.every)) and its background work; best of \(o.rounds) round(s), modes interleaved")
        out.append("blocked = time training waited for the checkpoint (longest rank); durable = from the end of its optimizer step "
                   + "to committed (rank 0); bg CPU = CPU time of the checkpoint threads (copy, checksum, write, exchange, commit; "
                   + "longest rank): what they take from training when every core computes")
        out.append("cost = (blocked + bg CPU) ÷ (\(o.every) × none's mean step): the slowdown of checkpointing every \(o.every) steps "
                   + "as its parts add up; slowdown = (window − none's window) ÷ the same, as the clock measures it (this VM's "
                   + "run-to-run noise is a few % of a window)")
        var json: [String] = []
        for name in o.sizes {
            let s = try BenchSize.named(name, among: sizes, command: "bench-checkpoint")
            var cells: [String: Cell] = [:]
            for round in 0..<o.rounds {
                for mode in modes {
                    var c = BenchScaffold.config("bench-checkpoint", s.with(batch: s.batch * ranks), threads: o.threads, data: path)
                    c.parallelism.dp = ranks; c.parallelism.zero = ranks > 1 && o.zero ? 1 : 0
                    c.checkpoint.every = mode == "none" ? 0 : o.every
                    c.checkpoint.mode = mode == "none" ? "lazy" : mode
                    c.checkpoint.keep = 1
                    c.checkpoint.dir = o.dir + "/\(s.name)-\(mode)-\(round)"
                    let trainer = try Trainer(config: c, runtime: runtime, options: TrainerOptions(measurePeak: false))
                    trainer.log = { _ in }
                    var cell = cells[mode] ?? Cell()
                    var t0: UInt64 = 0
                    for i in 0..<steps {
                        if i == o.warmup { try world?.barrier(); t0 = DispatchTime.now().uptimeNanoseconds }
                        _ = trainer.trainStep(i)
                        trainer.checkpointAfter(step: i + 1, force: false, metrics: nil)
                    }
                    try trainer.checkpointer.finish()  // inside the window: all background work counts
                    var dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                    if let world { dt = try world.allreduce(dt, op: .max) }
                    var cpu = trainer.checkpointer.backgroundCPUSeconds
                    if let world { cpu = try world.allreduce(cpu, op: .max) }
                    cell.cpu.append(cpu)
                    _ = trainer.checkpointer.collect()
                    cell.window.append(dt)
                    if let e = trainer.checkpointEvents.first {
                        cell.blocked.append(e.blockedSeconds); cell.durable.append(e.durableSeconds); cell.bytes = e.bytes
                    }
                    cells[mode] = cell
                    if rank == 0 { try? FileManager.default.removeItem(atPath: c.checkpoint.dir) }
                }
            }
            let none = cells["none"]!.window.min()!, step = none / Double(o.every + o.after)
            let syncBlocked = cells["sync"]!.blocked.min() ?? 0
            out.append("")
            out.append("size \(s.name): d \(s.d), \(s.layers) layers, vocab \(s.vocab), batch \(s.batch * ranks) × seq \(s.seq); "
                       + "\(fmt(step * 1000, 0)) ms per step without checkpoints")
            out.append("mode   MiB/ckpt   blocked ms   sync ÷ this   durable s   bg CPU s    cost   window s   extra s   slowdown")
            for mode in modes {
                let c = cells[mode]!
                let w = c.window.min()!, blocked = c.blocked.min() ?? 0
                var row = BenchScaffold.cell(mode, 6)
                row += (mode == "none" ? "–" : mib(c.bytes)).leftPad(9)
                row += (mode == "none" ? "–" : fmt(blocked * 1000, 1)).leftPad(13)
                row += (mode == "none" ? "–" : blocked > 0 ? fmt(syncBlocked / blocked, 0) + "×" : "∞").leftPad(14)
                row += (mode == "none" ? "–" : fmt(c.durable.min() ?? 0, 2)).leftPad(12)
                let cpu = c.cpu.min() ?? 0
                row += (mode == "none" ? "–" : fmt(cpu, 2)).leftPad(11)
                row += (mode == "none" ? "–" : fmt(100 * (blocked + (mode == "lazy" ? cpu : 0)) / (Double(o.every) * step), 2) + "%").leftPad(8)
                row += fmt(w, 2).leftPad(11)
                row += (mode == "none" ? "–" : fmt(w - none, 2)).leftPad(10)
                row += (mode == "none" ? "–" : fmt(100 * (w - none) / (Double(o.every) * step), 1) + "%").leftPad(11)
                out.append(row)
                var report: [String: Any] = ["bench": "bench-checkpoint", "size": s.name, "mode": mode, "ranks": ranks,
                                             "window_s": w, "step_s": step]
                if mode != "none" {
                    report.merge(["bytes": c.bytes, "blocked_s": blocked, "durable_s": c.durable.min() ?? 0, "background_cpu_s": cpu,
                                  "cost": (blocked + (mode == "lazy" ? cpu : 0)) / (Double(o.every) * step), "extra_s": w - none,
                                  "slowdown": (w - none) / (Double(o.every) * step)]) { $1 }
                }
                json.append(BenchScaffold.jsonLine(report))
            }
        }
        if o.json { out += json }
        return rank == 0 ? out.joined(separator: "\n") : nil
    }
}
