import ArgumentParser
import TesseraBench
import TesseraComm
import TesseraKernels

/// `tessera bench-sp` (under mpirun -np R×U); `--verify` checks the attention op alone against one rank's.
struct BenchSPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-sp", abstract: "Sequence-parallel training steps (under mpirun -np R×U).",
        discussion: "Ring overlap, attention bytes vs theory, balance and memory per sequence length; --budget-mib "
            + "instead plans the longest sequence each layout trains within a budget (no MPI). --verify instead runs the "
            + "sequence-parallel attention op alone (one layer, any --heads / --kv-heads) against single-rank attention "
            + "on the whole sequence, and its bytes and buffers against the formulas; exit status 1 if any differs.")

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

    @Flag(help: "Check the attention op against single-rank attention (random q, k, v; one --seq, default 128).")
    var verify = false
    @Option(help: ArgumentHelp("With --verify: query heads.", valueName: "h"))
    var heads: Int?
    @Option(name: .customLong("kv-heads"), help: ArgumentHelp("With --verify: key/value heads (grouped-query attention; default: --heads).", valueName: "k"))
    var kvHeads: Int?
    @Option(name: .customLong("head-dim"), help: ArgumentHelp("With --verify: head dimension.", valueName: "d"))
    var headDim: Int?
    @Option(help: ArgumentHelp("With --verify: sequences per batch.", valueName: "b"))
    var batch: Int?
    @Option(help: ArgumentHelp("With --verify: fp32 or bf16 (bf16 operands, as training.precision).", valueName: "p"))
    var precision: String?

    func validate() throws {
        try requireAtLeast("bench-sp", [("--ring", ring, 1), ("--ulysses", ulysses, 1), ("--steps", steps, 1),
                                        ("--warmup", warmup, 0), ("--threads", threads, 1)])
        _ = try integerList("bench-sp", "--seq", seq, example: "1024,2048")
        try requirePositive("bench-sp", "--budget-mib", budgetMiB)
        try requireAtLeast("bench-sp", [("--heads", heads, 1), ("--kv-heads", kvHeads, 1), ("--head-dim", headDim, 1),
                                        ("--batch", batch, 1)])
        let verifyOnly: [(String, Bool)] = [("--heads", heads != nil), ("--kv-heads", kvHeads != nil), ("--head-dim", headDim != nil),
                                            ("--batch", batch != nil), ("--precision", precision != nil)]
        // The training steps run model M, a GPT-2 with one key/value head per query head.
        if !verify, let (flag, _) = verifyOnly.first(where: { $0.1 }) { throw ValidationError("bench-sp: \(flag) goes with --verify") }
        if verify, budgetMiB != nil { throw ValidationError("bench-sp: --verify and --budget-mib are separate modes") }
        if verify, let seqs = try integerList("bench-sp", "--seq", seq, example: "1024,2048"), seqs.count > 1 {
            throw ValidationError("bench-sp: --verify takes one --seq length")
        }
        if let precision, Precision(rawValue: precision) == nil {
            throw ValidationError("bench-sp: --precision must be fp32 or bf16, not '\(precision)'")
        }
        if verify, let e = SequenceVerify.configurationError(try verifyOptions()) { throw ValidationError("bench-sp: \(e)") }
    }

    func run() throws {
        _ = prepareMachine()
        var o = SequenceBench.Options()
        o.ring = ring; o.ulysses = ulysses; o.steps = steps; o.warmup = warmup; o.threads = threads
        o.budgetMiB = budgetMiB; o.json = json
        if let seqs = try integerList("bench-sp", "--seq", seq, example: "1024,2048") { o.seqs = seqs }
        if let budget = o.budgetMiB { print(SequenceBench.plan(budgetMiB: budget, json: json)); return }
        let runtime = MPIRuntime()
        if verify {
            let (report, passed) = try SequenceVerify.run(runtime: runtime, options: verifyOptions())
            if let report { print(report) }
            runtime.finalize()
            if !passed { throw ExitCode(1) }
            return
        }
        if let report = try SequenceBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    }

    func verifyOptions() throws -> SequenceVerify.Options {
        var v = SequenceVerify.Options()
        v.ring = ring; v.ulysses = ulysses; v.threads = threads; v.json = json; v.kvHeads = kvHeads
        if let heads { v.heads = heads }
        if let headDim { v.headDim = headDim }
        if let batch { v.batch = batch }
        if let precision { v.precision = Precision(rawValue: precision)! }
        if let seqs = try integerList("bench-sp", "--seq", seq, example: "128") { v.seq = seqs[0] }
        return v
    }
}
