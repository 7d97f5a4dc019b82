// The activation memory of a run: each layer's policy (`memory.layer_policy`, `memory.policy`, or planned
// for `memory.activation_budget` by `memory.policy = auto`), the offload tier when a layer offloads, and
// the predicted peak that the measured one is compared with.

import Foundation
import TesseraMemory
import TesseraModel
import TesseraPipeline

public struct MemorySetup {
    /// Policy per global layer (layers held by other pipeline stages: keep, never used here).
    public let policies: [LayerPolicy]
    public let tier: OffloadTier?
    /// Write and read bandwidth of the tier (measured when the planner needed it).
    public let tierBandwidth: (write: Double, read: Double)?
    public let costs: ActivationCosts
    public let planner: ActivationPlanner
    /// This rank's policies in planner order (its layers, chunk by chunk) and their prediction.
    public let plan: ActivationPlanner.Plan
    public let auto: Bool
    public let budget: Int

    /// `setsPerChunk`: activation sets alive at once per chunk (1 without a pipeline); `flopRate`: this rank's
    /// sgemm rate (for the planner's time estimates); `agree`: the minimum of a value over the ranks, so that
    /// ranks that must run the same plan (a sequence group) plan from the same measurements.
    public init(config: TesseraConfig, model: Transformer, rank: Int, batch: Int, tokens: Int, setsPerChunk: [Int],
                ownLossGradient: Bool, flopRate: @autoclosure () -> Double, agree: (Double) -> Double = { $0 }) throws {
        let m = config.memory, layers = model.config.nLayer
        auto = m.policy == "auto"
        budget = m.activationBudget
        var costs = ActivationCosts(config: model.config, batch: batch, tokens: tokens, seqLen: config.training.seqLen,
                                stage: model.stage, setsPerChunk: setsPerChunk, ownLossGradient: ownLossGradient,
                                attentionSaved: model.attention.savedFloats(batch: batch, tokens: tokens),
                                attentionReadsQKV: model.attention.backwardReadsLocalQKV,
                                microbatches: config.training.microbatches)
        costs.operandsAreBF16 = model.precision == .bf16
        self.costs = costs
        let mine = model.stage.chunks.flatMap { Array($0) }
        var global: [LayerPolicy]
        if auto {
            global = Array(repeating: .keep, count: layers)
        } else if !m.layerPolicy.isEmpty {
            global = try LayerPolicy.parseList(m.layerPolicy, layers: layers, key: "memory.layer_policy")
        } else {
            global = Array(repeating: LayerPolicy(rawValue: m.policy) ?? .keep, count: layers)
        }
        // The tier exists when a layer here offloads, or when the planner may choose to.
        let needsTier = auto || mine.contains { global[$0] == .offload }
        tier = needsTier ? try OffloadTier(directory: config.offloadDir, rank: rank) : nil
        if auto {
            let measured = tier!.measureBandwidth()
            let bandwidth = (write: agree(measured.write), read: agree(measured.read))
            tierBandwidth = bandwidth
            planner = costs.planner(flopRate: agree(flopRate()), tier: bandwidth)
            plan = try planner.plan(budget: m.activationBudget)
            for (l, p) in zip(mine, plan.policies) { global[l] = p }
        } else {
            tierBandwidth = nil
            planner = costs.planner(flopRate: 1e11, tier: nil)
            plan = planner.evaluate(mine.map { global[$0] })
        }
        policies = global
    }

    public var memoryPlan: MemoryPlan {
        MemoryPlan(policies: policies, tier: plan.policies.contains(.offload) ? tier : nil)
    }

    /// The banner lines: this rank's plan and prediction.
    public func describe() -> String {
        var s = "  activations: " + (auto ? "auto plan for a budget of \(mib(budget)) MiB per rank: " : "policy ")
            + LayerPolicy.describe(plan.policies) + "; predicted peak \(mib(plan.predictedBytes)) MiB on this rank"
        s += " (keep everything: \(mib(planner.bytes(Array(repeating: .keep, count: plan.policies.count)))) MiB"
        s += ", least: \(mib(planner.smallest.predictedBytes)) MiB)"
        if auto { s += String(format: "; predicted extra %.1f ms/step", 1000 * plan.predictedSeconds) }
        if let tier, plan.policies.contains(.offload) || auto {
            s += "\n  offload tier: \(tier.directory)"
            if let b = tierBandwidth { s += String(format: " (write %.2f GB/s, read %.2f GB/s measured)", b.write / 1e9, b.read / 1e9) }
        }
        return s
    }
}
