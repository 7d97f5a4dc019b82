// How a model's pipeline is laid out: the layer split over virtual stages (explicit, or balanced by the
// cost model below), which stage each pipeline rank runs, and the plan. Every rank computes the same
// answer from the settings alone, so rank 0 also knows every other stage's tensors (for reports and for
// gathering the whole model).

import Foundation
import TesseraModel

public struct PipelineLayout: Sendable {
    public let stages: Int, chunks: Int
    /// Layer range of each virtual stage (virtual stage s = chunk · stages + rank).
    public let partition: StagePartition
    public let plan: PipelinePlan
    public let model: TransformerConfig

    /// `stages` pipeline ranks running `schedule` over `microbatches`; `virtualStages` chunks per rank when the
    /// schedule is interleaved; `explicitStageLayers` the layers of each virtual stage (nil: balanced by cost).
    public init(model gpt: TransformerConfig, seqLen: Int, stages: Int, schedule: String, microbatches: Int, virtualStages: Int,
                explicitStageLayers: [Int]?) throws {
        self.stages = stages
        chunks = schedule == "interleaved" ? virtualStages : 1
        self.model = gpt
        let cost = Self.costs(gpt, seqLen: seqLen)
        if let counts = explicitStageLayers {
            partition = .explicit(layerCounts: counts, blockCost: cost.block, first: cost.first, last: cost.last)
        } else {
            partition = .balanced(layerCount: gpt.nLayer, stages: stages * chunks, blockCost: cost.block, first: cost.first,
                                  last: cost.last)
        }
        plan = try PipelinePlanner.plan(schedule: schedule, stages: stages, microbatches: microbatches, virtualStages: chunks)
    }

    /// Training FLOPs per token of a block, of the first stage's extra work (embeddings) and of the last's
    /// (ln_f, the LM head and the loss): 6 × parameters per token, plus attention's 12 · seq · d per block.
    static func costs(_ c: TransformerConfig, seqLen: Int) -> (block: Double, first: Double, last: Double) {
        let d = Double(c.dModel)
        let blockWeights = d * Double(c.qkvWidth + c.dModel + c.mlpInWidth) + Double(c.mlpHiddenWidth) * d  // GPT-2: 12·d²
        return (6 * blockWeights + 6 * Double(seqLen) * d, 2 * d, 6 * Double(c.vocabSize) * d + 10 * d)
    }

    /// The part of the model pipeline rank `rank` holds: the first stage embeds, the last has the head.
    public func stage(rank: Int) -> ModelStage {
        ModelStage(chunks: (0..<chunks).map { partition.layers[$0 * stages + rank] },
                   hasEmbedding: rank == 0, hasHead: rank == stages - 1)
    }

    /// The banner's lines: schedule, the stages and the bubble the theory predicts.
    public func describe(microbatches m: Int) -> String {
        var s = "  pipeline: \(stages) stages, \(plan.schedule) schedule, \(m) micro-batch(es)"
        if chunks > 1 { s += ", \(chunks) chunks per rank" }
        s += String(format: "; theoretical bubble %.1f%%", 100 * plan.theoreticalBubble)
        for r in 0..<stages {
            let count = ModelParameters.specs(model, stage: stage(rank: r)).reduce(0) { $0 + $1.count }
            s += "\n    stage \(r): \(stage(rank: r)) (" + String(format: "%.2f", Double(count) / 1e6) + "M parameters)"
        }
        return s
    }
}
