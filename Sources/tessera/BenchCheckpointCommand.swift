import ArgumentParser
import Foundation
import TesseraBench
import TesseraComm

/// `tessera bench-checkpoint` (1 rank, or mpirun -np 2: data-parallel + ZeRO-1).
struct BenchCheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-checkpoint", abstract: "Training blocked per checkpoint, lazy vs sync, and time to durable.",
        discussion: "Also the slowdown of checkpointing every N steps. One rank, or under mpirun -np 2 data-parallel "
            + "replicas with ZeRO-1.")

    @Option(help: ArgumentHelp("Comma-separated sizes (S, M, L, XS).", valueName: "sizes"))
    var sizes: String?
    @Option(help: ArgumentHelp("Checkpoint after this many steps.", valueName: "n"))
    var every = CheckpointBench.Options().every
    @Option(help: ArgumentHelp("Steps after the checkpoint inside the timed window.", valueName: "n"))
    var after = CheckpointBench.Options().after
    @Option(help: ArgumentHelp("Untimed warm-up steps.", valueName: "n"))
    var warmup = CheckpointBench.Options().warmup
    @Option(help: ArgumentHelp("Rounds over the modes (best is reported).", valueName: "n"))
    var rounds = CheckpointBench.Options().rounds
    @Option(help: ArgumentHelp("Kernel threads per rank.", valueName: "n"))
    var threads = CheckpointBench.Options().threads
    @Option(help: ArgumentHelp("Where checkpoints are written (and removed).", valueName: "dir"))
    var dir: String?
    @Flag(name: .customLong("no-zero"), help: "With 2 ranks: plain data parallelism instead of ZeRO-1.")
    var noZero = false
    @Flag(help: "Also print a JSON report, one object per size and mode.")
    var json = false

    func validate() throws {
        try requireAtLeast("bench-checkpoint", [("--every", every, 1), ("--after", after, 1), ("--rounds", rounds, 1),
                                                ("--threads", threads, 1), ("--warmup", warmup, 0)])
    }

    func run() throws {
        _ = prepareMachine()
        var o = CheckpointBench.Options()
        if let sizes { o.sizes = sizes.split(separator: ",").map { String($0).uppercased() } }
        if let dir { o.dir = dir }
        o.zero = !noZero; o.every = every; o.after = after; o.warmup = warmup; o.rounds = rounds; o.threads = threads; o.json = json
        let runtime = ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil ? MPIRuntime() : nil
        if let report = try CheckpointBench.run(runtime: runtime, options: o) { print(report) }
        runtime?.finalize()
    }
}
