import ArgumentParser
import Foundation
import TesseraBench
import TesseraComm
import TesseraTraining

/// `tessera bench-memory` (mpirun -np R×U for R×U > 1).
struct BenchMemoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-memory", abstract: "Activation memory and step time per memory policy against keep.",
        discussion: "Also offload I/O hidden behind compute and the auto plan against the measured peak. Under mpirun "
            + "-np R×U with --ring R / --ulysses U the ranks split each sequence.")

    @Option(help: ArgumentHelp("Comma-separated sizes (S, M, L, M-long, XS).", valueName: "sizes"))
    var sizes: String?
    @Option(help: ArgumentHelp("Comma-separated policies (keep, full, selective, offload, auto).", valueName: "names"))
    var policies: String?
    @Option(help: ArgumentHelp("Timed steps per policy and round.", valueName: "n"))
    var steps = MemoryBench.Options().steps
    @Option(help: ArgumentHelp("Untimed warm-up steps.", valueName: "n"))
    var warmup = MemoryBench.Options().warmup
    @Option(help: ArgumentHelp("Kernel threads per rank.", valueName: "n"))
    var threads = MemoryBench.Options().threads
    @Option(help: ArgumentHelp("Rounds over every policy.", valueName: "n"))
    var rounds = MemoryBench.Options().rounds
    @Option(name: .customLong("budget-mib"), help: ArgumentHelp("The auto policy's activation budget, MiB.", valueName: "x"))
    var budgetMiB: Double?
    @Option(name: .customLong("budget-fraction"), help: ArgumentHelp(
        "The auto policy's budget as a fraction of the way from the least plan's peak to keep's (default 0.5).", valueName: "f"))
    var budgetFraction: Double?
    @Option(name: .customLong("offload-dir"), help: ArgumentHelp("The offload tier's directory.", valueName: "dir"))
    var offloadDir: String?
    @Option(help: ArgumentHelp("Ring attention degree.", valueName: "r"))
    var ring = MemoryBench.Options().ring
    @Option(help: ArgumentHelp("Ulysses degree.", valueName: "u"))
    var ulysses = MemoryBench.Options().ulysses
    @Flag(help: "Also print a JSON report, one object per size and policy.")
    var json = false

    func validate() throws {
        try requireAtLeast("bench-memory", [("--steps", steps, 1), ("--warmup", warmup, 0), ("--threads", threads, 1),
                                            ("--rounds", rounds, 1), ("--ring", ring, 1), ("--ulysses", ulysses, 1)])
        try requirePositive("bench-memory", "--budget-mib", budgetMiB)
        try requirePositive("bench-memory", "--budget-fraction", budgetFraction)
        _ = try nameList("bench-memory", "--policies", policies, known: MemoryConfig.policyValues, what: "policy")
    }

    func run() throws {
        _ = prepareMachine()
        var o = MemoryBench.Options()
        if let sizes { o.sizes = sizes.split(separator: ",").map(String.init) }
        if let p = try nameList("bench-memory", "--policies", policies, known: MemoryConfig.policyValues, what: "policy") { o.policies = p }
        if let offloadDir { o.offloadDir = offloadDir }
        if let budgetMiB { o.budgetMiB = budgetMiB }
        if let budgetFraction { o.budgetFraction = budgetFraction }
        o.steps = steps; o.warmup = warmup; o.threads = threads; o.rounds = rounds; o.ring = ring; o.ulysses = ulysses; o.json = json
        let runtime = o.ring * o.ulysses > 1 || ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil ? MPIRuntime() : nil
        if let report = try MemoryBench.run(runtime: runtime, options: o) { print(report) }
        runtime?.finalize()
    }
}
