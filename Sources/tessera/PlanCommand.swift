import ArgumentParser
import TesseraPipeline
import TesseraTraining

/// `tessera plan CONFIG.toml [--section.key VALUE ...]`.
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "The pipeline schedule grid (ranks × time), bubble and live micro-batches of a config.")

    @Argument(parsing: .allUnrecognized, help: overridesHelp)
    var arguments: [String] = []

    func validate() throws {
        let (_, rest) = try configArguments(arguments, command: "plan")
        guard rest.count == 1 else { throw ValidationError("plan takes one config file and --section.key VALUE overrides") }
    }

    func run() throws {
        _ = prepareMachine()
        let (overrides, rest) = try ConfigLoader.splitOverrides(arguments)
        let config = try ConfigLoader.load(path: rest[0], overrides: overrides, dataFiles: false)  // plans need no data
        let p = config.parallelism
        let plan = try PipelinePlanner.plan(schedule: p.pipelineSchedule, stages: p.pp,
                                            microbatches: config.training.microbatches, virtualStages: p.virtualStages)
        print(try PipelineSimulation(plan: plan).report(plan: plan))
        if p.pp > 1 { print("\n" + (try PipelineLayout(config: config)).describe(microbatches: config.training.microbatches)) }
    }
}
