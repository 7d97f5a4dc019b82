import ArgumentParser
import TesseraComm
import Foundation
import TesseraPipeline
import TesseraPlanner
import TesseraTopology
import TesseraTraining

/// `tessera plan CONFIG.toml [--hostfile FILE] [--section.key VALUE ...]` and
/// `tessera plan --auto CONFIG.toml --ranks N [--hostfile FILE] [--memory-per-rank BYTES] [--write FILE]`.
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "The pipeline schedule grid (ranks × time), bubble and live micro-batches of a config; with --hostfile, "
            + "where each rank goes on the hosts; with --auto, every layout on N ranks ranked by predicted step time.",
        discussion: """
            --hostfile FILE: an Open MPI hostfile; its '# link A B RATE LATENCY' comments give the links \
            (docs/placement.md); the ranks go where Open MPI's default mapping puts them.
            --auto: every valid layout of the config on --ranks N ranks (degrees, ZeRO-1, schedule, micro-batches, memory \
            policy), each one's predicted memory per rank and step time (from a calibration run on this machine), those \
            over --memory-per-rank (bytes, or with KiB/MiB/GiB; default: this machine's available memory over the ranks \
            per host) dropped, the rest ranked (--policies keep,full: only those memory policies); --write FILE writes the first choice as a config. --threads N: threads per \
            rank for the calibration (default: cores over ranks per host). --json FILE: every prediction as JSON. docs/planner.md explains the model.
            """)

    @Argument(parsing: .allUnrecognized, help: overridesHelp)
    var arguments: [String] = []

    /// The plan's own options, taken out of the arguments (the rest are the config and its overrides).
    struct Options {
        var hostfile: String?, auto = false, ranks: Int?, memoryPerRank: Int?, write: String?, threads: Int?, json: String?
        var policies = LayoutSpace.policies
        var rest: [String] = []
    }

    func options() throws -> Options {
        var o = Options(), i = 0
        func value(_ flag: String) throws -> String {
            guard i + 1 < arguments.count else { throw ValidationError("\(flag) needs a value") }
            i += 2
            return arguments[i - 1]
        }
        func count(_ flag: String, _ text: String) throws -> Int {
            guard let n = Int(text), n >= 1 else { throw ValidationError("\(flag) expects a positive integer, got '\(text)'") }
            return n
        }
        while i < arguments.count {
            switch arguments[i] {
            case "--hostfile": o.hostfile = try value("--hostfile")
            case "--auto": o.auto = true; i += 1
            case "--ranks": o.ranks = try count("--ranks", try value("--ranks"))
            case "--threads": o.threads = try count("--threads", try value("--threads"))
            case "--write": o.write = try value("--write")
            case "--json": o.json = try value("--json")
            case "--policies":
                let text = try value("--policies")
                o.policies = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                let allowed = ["keep", "selective", "full", "offload"]
                guard !o.policies.isEmpty, o.policies.allSatisfy(allowed.contains) else {
                    throw ValidationError("--policies expects memory policies from \(allowed.joined(separator: ", ")), comma-separated; got '\(text)'")
                }
            case "--memory-per-rank":
                let text = try value("--memory-per-rank")
                guard let b = Self.bytes(text) else {
                    throw ValidationError("--memory-per-rank expects bytes, or a number with KiB, MiB or GiB; got '\(text)'")
                }
                o.memoryPerRank = b
            default: o.rest.append(arguments[i]); i += 1
            }
        }
        if o.auto && o.ranks == nil { throw ValidationError("plan --auto needs --ranks N") }
        if !o.auto && (o.ranks != nil || o.memoryPerRank != nil || o.write != nil || o.threads != nil || o.json != nil
                       || o.policies != LayoutSpace.policies) {
            throw ValidationError("--ranks, --memory-per-rank, --threads, --policies, --write and --json belong to plan --auto")
        }
        return o
    }

    static func write(_ text: String, to path: String, what: String) throws {
        do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw ValidationError("\(what) \(path): cannot write the file (\((error as NSError).localizedDescription))")
        }
    }

    /// "2GiB" → bytes.
    static func bytes(_ s: String) -> Int? {
        for (unit, f) in [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40)] where s.hasSuffix(unit) {
            guard let v = Double(s.dropLast(unit.count)), v > 0, v * Double(f) < 9e18 else { return nil }
            return Int(v * Double(f))
        }
        return Int(s).flatMap { $0 > 0 ? $0 : nil }
    }

    func validate() throws {
        let (_, rest) = try configArguments(try options().rest, command: "plan")
        guard rest.count == 1 else { throw ValidationError("plan takes one config file and --section.key VALUE overrides") }
    }

    func run() throws {
        _ = prepareMachine()
        let o = try options()
        let (overrides, rest) = try ConfigLoader.splitOverrides(o.rest)
        let config = try ConfigLoader.load(path: rest[0], overrides: overrides, dataFiles: false)  // plans need no data
        if o.auto {
            let plan = try LayoutPlan.plan(base: config, ranks: o.ranks!, hostfile: try o.hostfile.map { try Hostfile(path: $0) },
                                           memoryPerRank: o.memoryPerRank, threads: o.threads, policies: o.policies)
            print(plan.report())
            if let path = o.json { try Self.write(plan.json(), to: path, what: "--json") }
            if let path = o.write {
                guard let best = plan.best else { throw ValidationError("no layout fits: nothing written to \(path)") }
                try Self.write(ConfigLoader.render(best.candidate.config), to: path, what: "--write")
                print("wrote \(path)")
            }
            return
        }
        let p = config.parallelism
        let plan = try PipelinePlanner.plan(schedule: p.pipelineSchedule, stages: p.pp,
                                            microbatches: config.training.microbatches, virtualStages: p.virtualStages)
        print(try PipelineSimulation(plan: plan).report(plan: plan))
        if p.pp > 1 { print("\n" + (try PipelineLayout(config: config)).describe(microbatches: config.training.microbatches)) }
        if let hostfile = o.hostfile { print("\n" + (try placement(config, hostfile: hostfile))) }
    }

    /// Where the config's ranks go on the hostfile's hosts, as the job would place them.
    func placement(_ config: TesseraConfig, hostfile path: String) throws -> String {
        let p = config.parallelism
        let file = try Hostfile(path: path)
        let hosts = file.map(ranks: p.pp * p.dp * p.ring * p.ulysses)
        let links = file.linkMatrix(hosts: hosts.names)
            ?? LinkMatrix(hosts: hosts.names, source: "defaults: no '# link' comment describes every pair of hosts in \(path); "
                          + "the job measures them at start")
        let placed = Placement.of(config: config, hosts: hosts, links: links)
        let mesh = placed.shape
        var s = "placement of \(mesh) on \(path):\n" + placed.describe(links: links, chosen: "parallelism.placement = \"\(p.placement)\"")
        s += "\n  traffic per step: " + MeshTraffic(config: config).describe
        s += "\n  ranks: " + (0..<mesh.size).map { w in
            "\(w) \(hosts.names[hosts.hostOfRank[w]]) \(mesh.coordinate(of: placed.indexOfWorldRank[w]))"
        }.joined(separator: "\n         ")
        return s
    }
}
