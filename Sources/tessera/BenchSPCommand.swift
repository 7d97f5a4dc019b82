import ArgumentParser
import TesseraBench
import TesseraComm

/// `tessera bench-sp` (under mpirun -np R×U).
struct BenchSPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-sp", abstract: "Sequence-parallel training steps (under mpirun -np R×U).",
        discussion: "Ring overlap, attention bytes vs theory, balance and memory per sequence length; --budget-mib "
            + "instead plans the longest sequence each layout trains within a budget (no MPI).")

    @Option(help: ArgumentHelp("Ring attention degree R.", valueName: "r"))
    var ring = SequenceBench.Options().ring
    @Option(help: ArgumentHelp("Ulysses degree U.", valueName: "u"))
    var ulysses = SequenceBench.Options().ulysses
    @Option(help: ArgumentHelp("Comma-separated sequence lengths (default 1024,2048,4096).", valueName: "lengths"))
    var seq: String?
    @Option(help: ArgumentHelp("Timed steps per length.", valueName: "n"))
    var steps = SequenceBench.Options().steps
    @Option(help: ArgumentHelp("Untimed warm-up steps per length.", valueName: "n"))
    var warmup = SequenceBench.Options().warmup
    @Option(help: ArgumentHelp("Kernel threads per rank.", valueName: "n"))
    var threads = SequenceBench.Options().threads
    @Option(name: .customLong("budget-mib"), help: ArgumentHelp(
        "Plan the longest sequence each layout trains within X MiB of activations per rank.", valueName: "x"))
    var budgetMiB: Double?
    @Flag(help: "Also print a JSON report, one object per sequence length (or layout).")
    var json = false

    func validate() throws {
        try requireAtLeast("bench-sp", [("--ring", ring, 1), ("--ulysses", ulysses, 1), ("--steps", steps, 1),
                                        ("--warmup", warmup, 0), ("--threads", threads, 1)])
        _ = try integerList("bench-sp", "--seq", seq, example: "1024,2048")
        try requirePositive("bench-sp", "--budget-mib", budgetMiB)
    }

    func run() throws {
        _ = prepareMachine()
        var o = SequenceBench.Options()
        o.ring = ring; o.ulysses = ulysses; o.steps = steps; o.warmup = warmup; o.threads = threads
        o.budgetMiB = budgetMiB; o.json = json
        if let seqs = try integerList("bench-sp", "--seq", seq, example: "1024,2048") { o.seqs = seqs }
        if let budget = o.budgetMiB { print(SequenceBench.plan(budgetMiB: budget, json: json)); return }
        let runtime = MPIRuntime()
        if let report = try SequenceBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    }
}
