import Foundation

// Runs a plan on paper: every rank executes its actions in order; an action starts when the rank is free
// and its inputs exist (forward of virtual stage s after the same micro-batch's forward at s−1; backward
// at s after the forward at s and the backward at s+1). Communication is free by default, which matches an
// engine that posts every receive before it is needed on fast links; `transfer` time units per message
// (activation forward, gradient backward, between consecutive virtual stages) model slow ones. A plan that can stall forever is reported as a deadlock;
// otherwise the simulation yields the time grid, each rank's idle fraction and its peak number of
// micro-batches whose activations are alive (forward done, backward not yet).

public struct PipelineSimulation: Sendable {
    public struct Slot: Sendable { public let rank: Int, start: Int, end: Int; public let action: PipelineAction }
    public let slots: [Slot]
    public let makespan: Int
    /// Idle time ÷ makespan, per rank.
    public let idleFraction: [Double]
    /// Peak count of (micro-batch, chunk) activations held at once, per rank.
    public let peakAlive: [Int]

    /// Forward costs `forward` time units, backward `backward` (2:1 as in the bubble formulas).
    public init(plan: PipelinePlan, forward: Int = 1, backward: Int = 2) throws {
        try self.init(plan: plan, forwardPerRank: Array(repeating: forward, count: plan.stages),
                      backwardPerRank: Array(repeating: backward, count: plan.stages))
    }

    /// Each rank's own forward and backward cost (per action): what a measured, unequal pipeline predicts.
    public init(plan: PipelinePlan, forwardPerRank: [Int], backwardPerRank: [Int], transfer: Int = 0) throws {
        let p = plan.stages, last = plan.virtualStageCount - 1
        var next = [Int](repeating: 0, count: p)          // index of each rank's next action
        var free = [Int](repeating: 0, count: p)          // when each rank is free
        var doneF: [Int: Int] = [:], doneB: [Int: Int] = [:]   // key (mb, virtual stage) -> end time
        func key(_ mb: Int, _ vs: Int) -> Int { mb * 4096 + vs }
        var slots: [Slot] = [], busy = [Int](repeating: 0, count: p)
        var alive = [Int](repeating: 0, count: p), peak = [Int](repeating: 0, count: p)
        let total = plan.actions.reduce(0) { $0 + $1.count }
        while slots.count < total {
            // Among ranks whose next action is ready, start the one that can start earliest.
            var best: (rank: Int, start: Int)? = nil
            for r in 0..<p where next[r] < plan.actions[r].count {
                let a = plan.actions[r][next[r]], vs = plan.virtualStage(rank: r, chunk: a.chunk)
                var ready: Int? = free[r]
                switch a.kind {
                case .forward:
                    if vs > 0 { ready = doneF[key(a.microbatch, vs - 1)].map { max(free[r], $0 + transfer) } }
                case .backward:
                    guard let f = doneF[key(a.microbatch, vs)] else { ready = nil; break }
                    if vs < last {
                        ready = doneB[key(a.microbatch, vs + 1)].map { max(free[r], $0 + transfer, f) }
                    } else { ready = max(free[r], f) }
                }
                if let t = ready, best == nil || t < best!.start { best = (r, t) }
            }
            guard let (r, start) = best else {
                let stuck = (0..<p).filter { next[$0] < plan.actions[$0].count }
                    .map { "rank \($0) waits at \(plan.actions[$0][next[$0]])" }
                throw PipelinePlanError(description: "deadlock in \(plan.schedule) (p \(p), m \(plan.microbatches), v \(plan.virtualStages)): "
                                        + stuck.joined(separator: "; "))
            }
            let a = plan.actions[r][next[r]], vs = plan.virtualStage(rank: r, chunk: a.chunk)
            let end = start + (a.kind == .forward ? forwardPerRank[r] : backwardPerRank[r])
            if a.kind == .forward {
                doneF[key(a.microbatch, vs)] = end; alive[r] += 1; peak[r] = max(peak[r], alive[r])
            } else {
                doneB[key(a.microbatch, vs)] = end; alive[r] -= 1
            }
            slots.append(Slot(rank: r, start: start, end: end, action: a))
            busy[r] += end - start; free[r] = end; next[r] += 1
        }
        let makespan = free.max() ?? 0
        self.slots = slots.sorted { ($0.rank, $0.start) < ($1.rank, $1.start) }
        self.makespan = makespan
        idleFraction = busy.map { makespan > 0 ? Double(makespan - $0) / Double(makespan) : 0 }
        peakAlive = peak
    }

    /// The schedule as a grid: one row per rank, one column per time unit.
    public func grid(plan: PipelinePlan) -> String {
        let width = max(4, slots.map { $0.action.description.count + 1 }.max() ?? 4)
        var lines: [String] = []
        for r in 0..<plan.stages {
            var row = [String](repeating: String(repeating: " ", count: width), count: makespan)
            for s in slots where s.rank == r {
                for t in s.start..<s.end {
                    let text = t == s.start ? s.action.description : (s.action.kind == .forward ? "·" : "-")
                    row[t] = text.padding(toLength: width, withPad: " ", startingAt: 0)
                }
            }
            lines.append("rank \(r) |" + row.joined() + "|")
        }
        return lines.joined(separator: "\n")
    }
}

extension PipelineSimulation {
    /// `tessera plan`'s report: the grid, and each rank's idle fraction and peak live micro-batches.
    public func report(plan: PipelinePlan) -> String {
        var out = ["pipeline schedule \(plan.schedule): \(plan.stages) stage(s), \(plan.microbatches) micro-batch(es)"
                   + (plan.schedule == "interleaved" ? ", \(plan.virtualStages) chunks per rank" : "")
                   + "; time in forward units (a backward takes 2); F3 = forward of micro-batch 3"
                   + (plan.schedule == "interleaved" ? ", F3.1 = through chunk 1" : ""), ""]
        out.append(grid(plan: plan))
        out.append("")
        out.append("rank  idle (bubble)   theory   peak live micro-batches")
        for r in 0..<plan.stages {
            out.append("\(r)".padding(toLength: 6, withPad: " ", startingAt: 0)
                       + String(format: "%5.1f%%", 100 * idleFraction[r]).padding(toLength: 16, withPad: " ", startingAt: 0)
                       + String(format: "%5.1f%%", 100 * plan.theoreticalBubble).padding(toLength: 9, withPad: " ", startingAt: 0)
                       + "\(peakAlive[r])")
        }
        return out.joined(separator: "\n")
    }
}
