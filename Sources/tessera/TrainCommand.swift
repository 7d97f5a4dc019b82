import ArgumentParser
import Foundation
import TesseraComm
import TesseraPlanner
import TesseraTraining

/// `tessera train CONFIG.toml [--section.key VALUE ...] [run flags]`.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train", abstract: "Train a model as the config describes.",
        discussion: "Any config key can be overridden on the command line, e.g. --training.steps 50. Under mpirun the "
            + "ranks form the config's mesh (pp × dp × ring × ulysses; Launch/tessera-run computes -np).")

    @OptionGroup var flags: RunFlags

    @Argument(parsing: .allUnrecognized, help: overridesHelp)
    var arguments: [String] = []

    func validate() throws {
        let (_, rest) = try configArguments(arguments, command: "train")
        guard rest.count == 1 else {
            throw ValidationError(rest.isEmpty ? "train needs a config file"
                : "train takes one config file and --section.key VALUE overrides; unexpected: \(rest.dropFirst().joined(separator: " "))")
        }
    }

    func run() throws {
        let coreTypeNote = prepareMachine()
        var options = TrainerOptions()
        options.traceDir = flags.traceDir
        options.dumpGradientsPath = flags.dumpGradientsPath
        options.fault = try flags.fault.map { try FaultInjection(parsing: $0) }
        if let ms = flags.checkpointCopyDelayMs { options.checkpointCopyDelayMs = ms }
        let resume = flags.resume
        var (overrides, rest) = try ConfigLoader.splitOverrides(arguments)
        if let dir = flags.initFrom { overrides.append((key: "model.init_from", value: dir)) }
        let path = rest[0]
        var config = try ConfigLoader.load(path: path, overrides: overrides)
        let runtime = MPIRuntime()
        if runtime.rank == 0, let note = coreTypeNote { print("tessera: note: \(note)") }
        let trainer: Trainer
        do {
            if config.training.layout == "auto" {
                // Rank 0 plans the layout for this job's ranks; every rank loads the config with its keys.
                let (chosen, note) = try AutoLayout.choose(config: config, world: runtime.worldCommunicator) { extra in
                    try ConfigLoader.load(path: path, overrides: overrides + extra)
                }
                config = chosen
                if runtime.rank == 0 { print("tessera: " + note) }
            }
            trainer = try Trainer(config: config, runtime: runtime, options: options)
        } catch {
            // Config-level errors are the same on every rank: rank 0 explains, then every rank finalizes (a
            // collective, so no rank exits, and makes mpirun stop the job, before the message is out).
            if runtime.rank == 0 { explain("\(path): \(error)") }
            runtime.finalize()
            throw ExitCode(2)
        }
        if let resume {
            do {
                let note = try trainer.resume(resume)
                if runtime.rank == 0 { print("tessera: " + note.replacingOccurrences(of: "\n", with: "\ntessera: ")) }
            } catch {
                // Decided together (the same on every rank): rank 0 explains, every rank stops.
                if runtime.rank == 0 { explain("\(error)") }
                runtime.finalize()
                throw ExitCode(2)
            }
        }
        var metrics: MetricsSink? = nil
        if runtime.rank == 0 {
            metrics = try MetricsSink(metricsPath: config.metricsPath,
                                      tensorboardDir: config.metrics.tensorboard ? config.tensorboardDir : nil,
                                      keepThrough: resume == nil ? nil : trainer.resumedStep ?? 0)
        }
        trainer.run(metrics: metrics)
        metrics?.close()
        if trainer.failure != nil {
            // A non-finite step stopped the run on every rank (rank 0 said why): finalize together, fail.
            runtime.finalize()
            throw ExitCode(4)
        }
        if runtime.rank == 0 && config.sample.tokens > 0 && trainer.stoppedBy == nil {
            print("\n--- sample (\(config.sample.tokens) tokens, temperature \(config.sample.temperature)) ---")
            // Rank 0 still finalizes with the others if the sample fails (it was checked when the data was opened).
            do { print(try trainer.sample()) } catch { print("no sample: \(error)") }
            print("---")
        }
        runtime.finalize()
    }
}

/// The config file and `--section.key VALUE` overrides of train, config show and plan, split as the config loader
/// splits them; an override error is a command-line error.
func configArguments(_ arguments: [String], command: String) throws -> (overrides: [(key: String, value: String)], rest: [String]) {
    do { return try ConfigLoader.splitOverrides(arguments) } catch { throw ValidationError("\(error)") }
}
