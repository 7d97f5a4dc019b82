// Pipeline schedules as data. A plan is, for every pipeline rank, the ordered list of actions it runs in
// one training step: the forward or backward of one micro-batch through one of its model chunks. The
// engine (PipelineEngine.swift) derives the messages from the actions: the forward of
// (micro-batch, virtual stage s) receives its input from virtual stage s−1 and sends its output to s+1;
// the backward receives the output gradient from s+1 and sends the input gradient to s−1. Virtual stage
// s = chunk · stages + rank (Megatron-LM's interleaving: chunks are dealt round robin).
//
// Schedules (Megatron-LM's orders):
//   gpipe        all forwards, then all backwards.
//   1f1b         min(stages − rank − 1, m) warm-up forwards, then one forward one backward, then the
//                remaining backwards; at most `stages` micro-batches alive per rank.
//   interleaved  1F1B over (micro-batch, chunk) pairs with v chunks per rank; needs m divisible by stages.

public struct PipelineAction: Sendable, Equatable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable { case forward = "F", backward = "B" }
    public let kind: Kind, microbatch: Int, chunk: Int
    public init(_ kind: Kind, microbatch: Int, chunk: Int = 0) { self.kind = kind; self.microbatch = microbatch; self.chunk = chunk }
    public var description: String { "\(kind.rawValue)\(microbatch)" + (chunk > 0 ? ".\(chunk)" : "") }
}

public struct PipelinePlan: Sendable {
    public let schedule: String, stages: Int, microbatches: Int, virtualStages: Int
    /// actions[rank] in execution order.
    public let actions: [[PipelineAction]]

    /// Virtual stage of a rank's chunk.
    public func virtualStage(rank: Int, chunk: Int) -> Int { chunk * stages + rank }
    public var virtualStageCount: Int { stages * virtualStages }

    /// The idle fraction the theory predicts with backward = 2 × forward: (p−1)/(m+p−1), or (p−1)/(v·m+p−1) interleaved.
    public var theoreticalBubble: Double {
        let p = Double(stages), m = Double(microbatches), v = Double(schedule == "interleaved" ? virtualStages : 1)
        return (p - 1) / (v * m + p - 1)
    }
}

public struct PipelinePlanError: Error, CustomStringConvertible {
    public let description: String
}

public enum PipelinePlanner {
    public static let schedules = ["gpipe", "1f1b", "interleaved"]

    /// Why this combination cannot be planned (nil when it can).
    public static func problem(schedule: String, stages p: Int, microbatches m: Int, virtualStages v: Int) -> String? {
        guard schedules.contains(schedule) else { return "unknown pipeline schedule \(String(reflecting: schedule)) (expected one of \(schedules.joined(separator: ", ")))" }
        guard p >= 1, m >= 1, v >= 1 else { return "stages, micro-batches and virtual stages must be at least 1" }
        if schedule == "interleaved" {
            if v < 2 { return "the interleaved schedule needs parallelism.virtual_stages >= 2 (got \(v))" }
            if p > 1 && m % p != 0 {
                return "the interleaved schedule needs training.microbatches to be a multiple of parallelism.pp: "
                    + "\(m) micro-batches on \(p) stages (\(m) = \(p) × \(m / p) + \(m % p)); use \(max(p, m / p * p)) or \((m / p + 1) * p)"
            }
        } else if v != 1 {
            return "parallelism.virtual_stages = \(v) needs the interleaved schedule (got \(String(reflecting: schedule)))"
        }
        return nil
    }

    public static func plan(schedule: String, stages p: Int, microbatches m: Int, virtualStages v: Int = 1) throws -> PipelinePlan {
        if let problem = problem(schedule: schedule, stages: p, microbatches: m, virtualStages: v) {
            throw PipelinePlanError(description: problem)
        }
        let actions: [[PipelineAction]]
        switch schedule {
        case "gpipe":
            actions = (0..<p).map { _ in
                (0..<m).map { PipelineAction(.forward, microbatch: $0) } + (0..<m).map { PipelineAction(.backward, microbatch: $0) }
            }
        case "1f1b":
            actions = (0..<p).map { r in oneFOneB(rank: r, stages: p, microbatches: m) }
        default:
            actions = (0..<p).map { r in interleaved(rank: r, stages: p, microbatches: m, chunks: v) }
        }
        return PipelinePlan(schedule: schedule, stages: p, microbatches: m, virtualStages: v, actions: actions)
    }

    static func oneFOneB(rank r: Int, stages p: Int, microbatches m: Int) -> [PipelineAction] {
        let warmup = min(p - r - 1, m)
        var out = (0..<warmup).map { PipelineAction(.forward, microbatch: $0) }
        var f = warmup, b = 0
        while f < m { out.append(.init(.forward, microbatch: f)); f += 1; out.append(.init(.backward, microbatch: b)); b += 1 }
        while b < m { out.append(.init(.backward, microbatch: b)); b += 1 }
        return out
    }

    /// Megatron-LM's interleaved order: the k-th forward of a rank is micro-batch (k / (p·v))·p + k % p through
    /// chunk (k / p) % v; backwards walk the chunks in reverse.
    static func interleaved(rank r: Int, stages p: Int, microbatches m: Int, chunks v: Int) -> [PipelineAction] {
        let total = m * v
        func mb(_ k: Int) -> Int { (k / (p * v)) * p + k % p }
        func forward(_ k: Int) -> PipelineAction { .init(.forward, microbatch: mb(k), chunk: (k / p) % v) }
        func backward(_ k: Int) -> PipelineAction { .init(.backward, microbatch: mb(k), chunk: v - 1 - (k / p) % v) }
        let warmup = m == p ? total : min(total, (p - r - 1) * 2 + (v - 1) * p)
        var out = (0..<warmup).map(forward)
        var f = warmup, b = 0
        while f < total { out.append(forward(f)); f += 1; out.append(backward(b)); b += 1 }
        while b < total { out.append(backward(b)); b += 1 }
        return out
    }
}
