// What the log and the metrics report over all ranks at a log step: activation memory per rank, offload I/O
// and sequence traffic summed or maxed, phase times as mean and max. Each figure is reduced by name through
// `JobReduction` (one collective per kind), so no code packs values into arrays by index arithmetic.

import TesseraComm
import TesseraMemory
import TesseraTimeline

/// Reductions of named figures over every rank of the job (identity on one rank).
struct JobReduction {
    let world: Communicator?

    /// Each rank's value, in world-rank order.
    func gather(_ x: Double) -> [Double] {
        guard let world, world.size > 1 else { return [x] }
        var out = [Double](repeating: 0, count: world.size)
        var mine = x
        run("gather") { try out.withUnsafeMutableBufferPointer { try world.allgather(send: &mine, recv: $0.baseAddress!, count: 1) } }
        return out
    }
    /// Sums over the ranks, figure by figure.
    func sum(_ figures: KeyValuePairs<String, Double>) -> [String: Double] { reduce(figures, .sum) }
    /// Maxima over the ranks, figure by figure.
    func max(_ figures: KeyValuePairs<String, Double>) -> [String: Double] { reduce(figures, .max) }

    private func reduce(_ figures: KeyValuePairs<String, Double>, _ op: ReduceOp) -> [String: Double] {
        var values = figures.map(\.value)
        if let world, world.size > 1 {
            let n = values.count
            run("\(op)") { try values.withUnsafeMutableBufferPointer { try world.allreduce($0.baseAddress!, count: n, op: op, label: "run summary") } }
        }
        return Dictionary(uniqueKeysWithValues: zip(figures.map(\.key), values))
    }

    private func run(_ what: String, _ body: () throws -> Void) {
        do { try body() } catch { MPIRuntime.abort("\(error) while summarising the run (\(what)); aborting the job") }
    }
}

extension Trainer {
    /// The last step's activation memory over all ranks (a collective).
    public func activationSummary() -> ActivationSummary {
        let a = lastActivation, o = a.offload ?? OffloadTier.Stats(), job = JobReduction(world: mesh?.world)
        let peaks = job.gather(Double(a.peakBytes)), predicted = job.gather(Double(memory.plan.predictedBytes))
        let buffers = job.gather(Double(sequenceBufferBytes))
        let plannedBuffers = job.gather(Double(plannedSequenceBufferBytes))
        let sums = job.sum(["written": Double(o.bytesWritten), "read": Double(o.bytesRead), "io": Double(o.ioNs) / 1e9,
                            "wait": Double(o.waitNs) / 1e9, "held": Double(a.tierHeldBytes)])
        let maxima = job.max(["recompute": a.recomputeSeconds, "sequence": Double(a.sequenceBytes),
                              "pipeline": Double(a.pipelineBytes)])
        return ActivationSummary(peakBytes: peaks.map { Int($0) }, predictedBytes: predicted.map { Int($0) },
                                 recomputeSecondsMax: maxima["recompute"]!, offloadWritten: Int(sums["written"]!),
                                 offloadRead: Int(sums["read"]!), offloadIOSeconds: sums["io"]!, offloadWaitSeconds: sums["wait"]!,
                                 tierHeldBytes: Int(sums["held"]!), sequenceBytesMax: Int(maxima["sequence"]!),
                                 pipelineBytesMax: Int(maxima["pipeline"]!), sequenceBufferBytes: buffers.map { Int($0) },
                                 predictedSequenceBufferBytes: plannedBuffers.map { Int($0) })
    }

    /// Mean and max over all ranks of each phase's seconds per step in the interval.
    func phaseSummary(_ p: PhaseTotals, steps: Int, pipelineWaitNs: UInt64) -> PhaseSummary {
        let n = Double(Swift.max(steps, 1)), job = JobReduction(world: mesh?.world), ranks = mesh?.world.size ?? 1
        let local: KeyValuePairs<String, Double> = ["compute": Double(p.computeNs) / 1e9 / n, "comm": Double(p.commNs) / 1e9 / n,
                                                    "idle": Double(p.idleNs) / 1e9 / n, "pipeline": Double(pipelineWaitNs) / 1e9 / n]
        let sum = job.sum(local), maxv = job.max(local)
        let mean = sum.mapValues { $0 / Double(ranks) }
        var summary = PhaseSummary(ranks: ranks, computeMean: mean["compute"]!, computeMax: maxv["compute"]!,
                                   commMean: mean["comm"]!, commMax: maxv["comm"]!, idleMean: mean["idle"]!, idleMax: maxv["idle"]!)
        if pipeline != nil { summary.pipelineWaitMean = mean["pipeline"]; summary.pipelineWaitMax = maxv["pipeline"] }
        return summary
    }
}
