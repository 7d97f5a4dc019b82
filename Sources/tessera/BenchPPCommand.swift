import ArgumentParser
import TesseraBench
import TesseraComm
import TesseraPipeline

/// `tessera bench-pp` (under mpirun -np P: one stage per rank).
struct BenchPPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-pp", abstract: "Pipeline bubble per stage vs theory (under mpirun -np P: one stage per rank).",
        discussion: "Also live micro-batches and activation memory per stage, for each schedule and micro-batch count.")

    @Option(help: ArgumentHelp("Model size (S, M, L).", valueName: "size"))
    var size = PipelineBench.Options().size
    @Option(help: ArgumentHelp("Layers of the model.", valueName: "n"))
    var layers = PipelineBench.Options().layers
    @Option(help: ArgumentHelp("Comma-separated micro-batch counts (default 1,2,4,8).", valueName: "counts"))
    var microbatches: String?
    @Option(help: ArgumentHelp("Comma-separated schedules (gpipe, 1f1b, interleaved).", valueName: "names"))
    var schedules: String?
    @Option(help: ArgumentHelp("Timed steps per configuration and round.", valueName: "n"))
    var steps = PipelineBench.Options().steps
    @Option(help: ArgumentHelp("Untimed warm-up steps.", valueName: "n"))
    var warmup = PipelineBench.Options().warmup
    @Option(help: ArgumentHelp("Kernel threads per rank.", valueName: "n"))
    var threads = PipelineBench.Options().threads
    @Option(help: ArgumentHelp("Rounds over every configuration.", valueName: "n"))
    var rounds = PipelineBench.Options().rounds
    @Flag(help: "Also print a JSON report, one object per schedule and micro-batch count.")
    var json = false

    func validate() throws {
        try requireAtLeast("bench-pp", [("--layers", layers, 1), ("--steps", steps, 1), ("--warmup", warmup, 0),
                                        ("--threads", threads, 1), ("--rounds", rounds, 1)])
        _ = try integerList("bench-pp", "--microbatches", microbatches, example: "1,4,8")
        _ = try nameList("bench-pp", "--schedules", schedules, known: PipelinePlanner.schedules, what: "schedule")
    }

    func run() throws {
        _ = prepareMachine()
        var o = PipelineBench.Options()
        o.size = size.uppercased(); o.layers = layers; o.steps = steps; o.warmup = warmup; o.threads = threads
        o.rounds = rounds; o.json = json
        if let ms = try integerList("bench-pp", "--microbatches", microbatches, example: "1,4,8") { o.microbatches = ms }
        if let names = try nameList("bench-pp", "--schedules", schedules, known: PipelinePlanner.schedules, what: "schedule") {
            o.schedules = names
        }
        let runtime = MPIRuntime()
        if let report = try PipelineBench.run(runtime: runtime, options: o) { print(report) }
        runtime.finalize()
    }
}
