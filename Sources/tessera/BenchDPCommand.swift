import ArgumentParser
import TesseraBench
import TesseraComm

/// `tessera bench-dp` (under mpirun -np 2 or more).
struct BenchDPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-dp", abstract: "Data-parallel scaling against one rank, in one run (under mpirun -np 2).",
        discussion: "Also the share of the gradient reduction hidden behind backward.")

    @Option(help: ArgumentHelp("Model size (S, M, L).", valueName: "size"))
    var size = ScalingBench.Options().size
    @Option(help: ArgumentHelp("Timed steps per round.", valueName: "n"))
    var steps = ScalingBench.Options().steps
    @Option(help: ArgumentHelp("Untimed warm-up steps per round.", valueName: "n"))
    var warmup = ScalingBench.Options().warmup
    @Option(help: ArgumentHelp("Rounds alternating one rank and all ranks.", valueName: "n"))
    var rounds = ScalingBench.Options().rounds
    @Option(help: ArgumentHelp("Kernel threads per rank.", valueName: "n"))
    var threads = ScalingBench.Options().threads
    @Option(name: .customLong("bucket-mb"), help: ArgumentHelp("Gradient bucket size, MiB.", valueName: "x"))
    var bucketMb = ScalingBench.Options().bucketMb
    @Flag(help: "ZeRO-1: reduce-scatter the gradients and allgather the parameters.")
    var zero = false
    @Flag(help: "Also print a JSON report, one object per rank count.")
    var json = false

    func validate() throws {
        try requireAtLeast("bench-dp", [("--steps", steps, 1), ("--rounds", rounds, 1), ("--threads", threads, 1),
                                        ("--warmup", warmup, 0)])
        try requirePositive("bench-dp", "--bucket-mb", bucketMb)
    }

    func run() throws {
        _ = prepareMachine()
        var o = ScalingBench.Options()
        o.size = size.uppercased(); o.steps = steps; o.warmup = warmup; o.rounds = rounds; o.threads = threads
        o.bucketMb = bucketMb; o.zero = zero; o.json = json
        let runtime = MPIRuntime()
        if let report = try ScalingBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    }
}
