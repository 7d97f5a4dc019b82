import ArgumentParser
import TesseraComm
import TesseraPipeline
import TesseraTopology
import TesseraTraining

/// `tessera plan CONFIG.toml [--hostfile FILE] [--section.key VALUE ...]`.
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "The pipeline schedule grid (ranks × time), bubble and live micro-batches of a config; with --hostfile, "
            + "where each rank goes on the hosts.",
        discussion: "--hostfile FILE: an Open MPI hostfile; its '# link A B RATE LATENCY' comments give the links "
            + "(docs/launching.md); the ranks go where Open MPI's default mapping puts them.")

    @Argument(parsing: .allUnrecognized, help: overridesHelp)
    var arguments: [String] = []

    /// The arguments without `--hostfile FILE`, and the file.
    func hostfileSplit() throws -> (rest: [String], hostfile: String?) {
        var rest: [String] = [], hostfile: String?, i = 0
        while i < arguments.count {
            if arguments[i] == "--hostfile" {
                guard i + 1 < arguments.count else { throw ValidationError("--hostfile needs a file") }
                hostfile = arguments[i + 1]; i += 2
            } else if arguments[i].hasPrefix("--hostfile=") {
                hostfile = String(arguments[i].dropFirst("--hostfile=".count)); i += 1
            } else { rest.append(arguments[i]); i += 1 }
        }
        return (rest, hostfile)
    }

    func validate() throws {
        let (_, rest) = try configArguments(try hostfileSplit().rest, command: "plan")
        guard rest.count == 1 else { throw ValidationError("plan takes one config file and --section.key VALUE overrides") }
    }

    func run() throws {
        _ = prepareMachine()
        let (arguments, hostfile) = try hostfileSplit()
        let (overrides, rest) = try ConfigLoader.splitOverrides(arguments)
        let config = try ConfigLoader.load(path: rest[0], overrides: overrides, dataFiles: false)  // plans need no data
        let p = config.parallelism
        let plan = try PipelinePlanner.plan(schedule: p.pipelineSchedule, stages: p.pp,
                                            microbatches: config.training.microbatches, virtualStages: p.virtualStages)
        print(try PipelineSimulation(plan: plan).report(plan: plan))
        if p.pp > 1 { print("\n" + (try PipelineLayout(config: config)).describe(microbatches: config.training.microbatches)) }
        if let hostfile { print("\n" + (try placement(config, hostfile: hostfile))) }
    }

    /// Where the config's ranks go on the hostfile's hosts, as the job would place them.
    func placement(_ config: TesseraConfig, hostfile path: String) throws -> String {
        let p = config.parallelism
        let file = try Hostfile(path: path)
        var shape = MeshShape(pp: p.pp, dp: p.dp, ring: p.ring, ulysses: p.ulysses)
        if let order = p.explicitOrder { shape.order = order }
        let hosts = file.map(ranks: shape.size)
        let links = file.linkMatrix(hosts: hosts.names)
            ?? LinkMatrix(hosts: hosts.names, source: "defaults: no '# link' comment describes every pair of hosts in \(path); "
                          + "the job measures them at start")
        let traffic = MeshTraffic(config: config)
        let placed = p.placement == "auto" ? Placement.choose(shape: shape, hosts: hosts, links: links, traffic: traffic)
            : Placement.worldOrder(shape: shape, hosts: hosts, links: links, traffic: traffic)
        var s = "placement of \(shape) on \(path):\n" + placed.describe(links: links, chosen: "parallelism.placement = \"\(p.placement)\"")
        s += "\n  traffic per step: " + traffic.describe
        let mesh = placed.shape
        s += "\n  ranks: " + (0..<shape.size).map { w in
            "\(w) \(hosts.names[hosts.hostOfRank[w]]) \(mesh.coordinate(of: placed.indexOfWorldRank[w]))"
        }.joined(separator: "\n         ")
        return s
    }
}
