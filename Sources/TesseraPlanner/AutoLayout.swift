// `training.layout = "auto"`: at start of `tessera train`, world rank 0 plans the config on the job's ranks (as
// `tessera plan --auto --ranks N` would, calibrating on this machine, on the job's own hosts and links: gathered and,
// on several hosts, read from the hostfile's comments or measured) and sends the first choice's keys to every rank,
// which all load the config again with them. The other ranks wait without spinning, so that the calibration has
// the CPUs. A plan that finds nothing is an error on every rank.

import Foundation
import TesseraComm
import TesseraTopology
import TesseraTraining

public enum AutoLayout {
    /// The config with the planned layout's keys (collective over `world`). `load` reloads the config with extra
    /// overrides (the caller's file and command line, then these).
    public static func choose(config: TesseraConfig, world: Communicator,
                              load: ([(key: String, value: String)]) throws -> TesseraConfig) throws -> (TesseraConfig, String) {
        // The job's hosts and, on several, its links (the hostfile's comments or measured): collectives, every rank.
        let hosts = try LinkProbe.hosts(world)
        let links = hosts.names.count > 1 ? try MeshPlacement.linkMatrix(world: world, hosts: hosts) : nil
        var message = ""
        if world.rank == 0 {
            do {
                let plan = try LayoutPlan.plan(base: config, ranks: world.size, hosts: hosts, links: links,
                                               threads: config.training.threads > 0 ? config.training.threads : nil)
                if let best = plan.best {
                    message = "ok\n" + best.candidate.overrides.map { "\($0.key)=\($0.value)" }.joined(separator: "\n")
                        + "\n#" + String(format: "%.1f ms predicted, %d layout(s) compared, calibrated in %.1f s", best.prediction.total * 1e3,
                                         plan.entries.count, plan.calibration.seconds)
                } else {
                    message = "error\nno layout of \(world.size) rank(s) fits \(plan.memoryPerRank >> 20) MiB per rank (\(plan.memorySource))"
                }
            } catch { message = "error\n\(error)" }
        }
        // Rank 0's message to everyone: its length, then the bytes (the others poll with sleeps).
        var length = [Int64(message.utf8.count)]
        try length.withUnsafeMutableBufferPointer { b in
            // Unwatched: its length is rank 0's calibration, not the network's.
            try world.ibroadcast(b.baseAddress!, count: 1, root: 0, label: "training.layout = auto: plan length")
                .sleepWait(pollMicroseconds: 500, watched: false)
        }
        var bytes = [UInt8](message.utf8) + [UInt8](repeating: 0, count: max(Int(length[0]) - message.utf8.count, 0))
        if bytes.isEmpty { bytes = [0] }
        try bytes.withUnsafeMutableBufferPointer { b in try world.broadcast(b.baseAddress!, count: Int(length[0]), root: 0,
                                                                           label: "training.layout = auto: plan") }
        let lines = String(decoding: bytes.prefix(Int(length[0])), as: UTF8.self).split(separator: "\n").map(String.init)
        guard lines.first == "ok" else {
            throw TrainingError("training.layout = \"auto\": " + lines.dropFirst().joined(separator: " "))
        }
        var overrides: [(key: String, value: String)] = [], note = ""
        for line in lines.dropFirst() {
            if line.hasPrefix("#") { note = String(line.dropFirst()); continue }
            let kv = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            overrides.append((kv[0], kv.count > 1 ? kv[1] : ""))
        }
        let chosen = try load(overrides)
        return (chosen, "training.layout = \"auto\": " + overrides.map { "\($0.key) = \($0.value)" }.joined(separator: ", ") + " (\(note))")
    }
}
