// `tessera plan --auto`: every valid layout of the config on N ranks (LayoutSpace, and PolicyMix's per-layer
// memory policies where keeping every activation does not fit), each one's predicted memory
// per rank and step time (StepTimeModel, from a calibration run on this machine and the links of the hosts),
// those that do not fit the memory per rank dropped, the rest ranked by predicted step time.

import Foundation
import TesseraComm
import TesseraKernels
import TesseraTopology
import TesseraTraining

public struct LayoutPlan: Sendable {
    public struct Entry: Sendable {
        public var candidate: LayoutCandidate
        public var prediction: StepPrediction
        public var fits: Bool
    }
    /// Every candidate, fastest first; those that do not fit after those that do.
    public var entries: [Entry]
    public var ranks: Int
    public var memoryPerRank: Int
    public var memorySource: String
    public var calibration: Calibration
    public var links: LinkMatrix
    public var hosts: HostMap

    public var best: Entry? { entries.first { $0.fits } }

    /// Plans `base` on `ranks` ranks. `hostfile`: where the ranks go and the links (default: one host);
    /// `memoryPerRank`: bytes each rank may use (default: the machine's available memory over the ranks per host);
    /// `threads`: per rank for the calibration (default: the machine's cores over the ranks per host).
    /// `hosts` and `links` (a running job's, gathered and measured) replace what the hostfile says.
    public static func plan(base: TesseraConfig, ranks: Int, hostfile: Hostfile? = nil, hosts known: HostMap? = nil,
                            links measured: LinkMatrix? = nil, memoryPerRank: Int? = nil,
                            threads: Int? = nil, policies: [String] = LayoutSpace.policies) throws -> LayoutPlan {
        guard ranks >= 1 else { throw TrainingError("plan --auto: --ranks must be at least 1") }
        let candidates = LayoutSpace.enumerate(base: base, ranks: ranks, policies: policies)
        guard !candidates.isEmpty else {
            throw TrainingError("plan --auto: no layout of this config runs on \(ranks) rank(s) (the global batch, sequence, heads "
                                + "and layers must divide by the degrees)")
        }
        let hosts = known ?? hostfile?.map(ranks: ranks) ?? HostMap(names: ["this machine"], hostOfRank: Array(repeating: 0, count: ranks))
        let links = measured ?? hostfile?.linkMatrix(hosts: hosts.names)
            ?? LinkMatrix(hosts: hosts.names, source: hostfile == nil ? "one host: shared memory (default)"
                          : "defaults: no '# link' comment describes every pair of hosts")
        let perHost = hosts.names.indices.map { hosts.ranks(on: $0).count }.max() ?? ranks
        let cores = Threads.availableCores()
        let calibration = Calibration.measure(config: base, shapes: Set(candidates.map { StepTimeModel.shape($0.config) }),
                                              threads: threads ?? max(cores / perHost, 1))
        var memory = memoryPerRank ?? 0, source = "--memory-per-rank"
        if memoryPerRank == nil {
            let machine = MachineMemory.read()
            memory = (machine?.bytes ?? Int.max / 2) / perHost
            source = "\(machine?.source ?? "unknown memory") over \(perHost) rank(s) per host"
        }
        var entries: [Entry] = []
        for c in candidates {
            let p = try StepTimeModel.predict(c.config, calibration: calibration, hosts: hosts, links: links)
            entries.append(Entry(candidate: c, prediction: p, fits: p.memory <= memory))
        }
        // Where keep does not fit: per stage the fewest layers under selective or full recomputation that fit.
        for e in entries where !e.fits {
            for policy in ["selective", "full"] where policies.contains(policy) {
                guard let mix = PolicyMix.candidate(e.candidate, policy: policy, memory: memory) else { continue }
                let p = try StepTimeModel.predict(mix.config, calibration: calibration, hosts: hosts, links: links)
                entries.append(Entry(candidate: mix, prediction: p, fits: p.memory <= memory))
            }
        }
        entries.sort { ($0.fits ? 0 : 1, $0.prediction.total) < ($1.fits ? 0 : 1, $1.prediction.total) }
        return LayoutPlan(entries: entries, ranks: ranks, memoryPerRank: memory, memorySource: source, calibration: calibration,
                          links: links, hosts: hosts)
    }

    /// One JSON object per candidate (fastest first): its overrides, whether it fits, the predicted step and its parts
    /// in seconds, the predicted memory per rank in bytes by part.
    public func json() -> String {
        var rows: [[String: Any]] = []
        for e in entries {
            let p = e.prediction
            var row: [String: Any] = ["layout": e.candidate.name, "fits": e.fits, "step_s": p.total, "compute_s": p.compute,
                                      "bubble_s": p.bubble, "recompute_s": p.recompute, "optimizer_s": p.optimizer,
                                      "communication_s": p.communication, "memory_bytes": p.memory,
                                      "overrides": e.candidate.overrides.map { ["key": $0.key, "value": $0.value] }]
            func parts(_ m: MemoryPrediction) -> [String: Int] {
                ["total": m.total, "parameters": m.parameters, "product_weights": m.productWeights, "gradients": m.gradients,
                 "optimizer": m.optimizer, "activations": m.activations, "workspace": m.workspace,
                 "checkpoint_staging": m.checkpointStaging, "whole_model": m.wholeModel]
            }
            if let m = p.memoryParts { row["memory_parts"] = parts(m) }
            row["memory_stages"] = p.stageMemory.map(parts)
            rows.append(row)
        }
        let data = (try? JSONSerialization.data(withJSONObject: ["ranks": ranks, "memory_per_rank": memoryPerRank, "layouts": rows],
                                                options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// The ranking as a table with each prediction's parts.
    public func report(limit: Int = 20) -> String {
        func ms(_ s: Double) -> String { String(format: "%.1f", s * 1e3) }
        func mib(_ b: Int) -> String { String(format: "%.1f", Double(b) / 1048576) }
        let tokens = Double(entries.first?.candidate.config.training.batchSize ?? 0) * Double(entries.first?.candidate.config.training.seqLen ?? 0)
        var lines = ["plan --auto: \(entries.count) layout(s) on \(ranks) rank(s) (\(hosts.names.count) host(s)); memory per rank "
                     + "\(mib(memoryPerRank)) MiB (\(memorySource)); calibrated in \(String(format: "%.1f", calibration.seconds)) s "
                     + "with \(calibration.threads) thread(s) per rank; links: \(links.source)"]
        let header = ["#", "layout", "step ms", "tok/s", "MiB/rank", "compute", "bubble", "recompute", "optimizer", "communication"]
        var rows = [header]
        for (i, e) in entries.prefix(limit).enumerated() {
            let p = e.prediction
            let comm = CommEstimate.kinds.compactMap { k in p.communication[k].map { "\(k) \(ms($0))" } }.joined(separator: ", ")
            rows.append([e.fits ? "\(i + 1)" : "-", e.candidate.name, ms(p.total), String(format: "%.0f", tokens / max(p.total, 1e-9)),
                         mib(p.memory) + (e.fits ? "" : " (too much)"), ms(p.compute), ms(p.bubble), ms(p.recompute), ms(p.optimizer),
                         comm.isEmpty ? "-" : comm])
        }
        let widths = (0..<header.count).map { k in rows.map { $0[k].count }.max() ?? 0 }
        lines += rows.map { r in r.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ") }
        if entries.count > limit { lines.append("(\(entries.count - limit) more)") }
        if let b = best {
            lines.append("choice: \(b.candidate.name): " + b.candidate.overrides.map { "--\($0.key) " + ($0.value.isEmpty ? "\"\"" : $0.value) }.joined(separator: " "))
        } else {
            lines.append("no layout fits \(mib(memoryPerRank)) MiB per rank")
        }
        return lines.joined(separator: "\n")
    }
}
