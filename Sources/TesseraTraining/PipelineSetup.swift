// How a config's pipeline is laid out: the layer split over virtual stages (explicit, or balanced by the
// cost model below), which stage each pipeline rank runs, and the plan. Every rank computes the same
// answer from the config alone, so rank 0 also knows every other stage's tensors (for reports and for
// gathering the whole model).

import TesseraComm
import TesseraKernels
import TesseraModel
import TesseraPipeline

public struct PipelineLayout: Sendable {
    public let stages: Int, chunks: Int
    /// Layer range of each virtual stage (virtual stage s = chunk · stages + rank).
    public let partition: StagePartition
    public let plan: PipelinePlan
    let gpt: GPTConfig

    public init(config: TesseraConfig) throws {
        let p = config.parallelism, m = config.model, t = config.training
        stages = p.pp
        chunks = p.pipelineSchedule == "interleaved" ? p.virtualStages : 1
        let gpt = GPTConfig(vocabSize: m.vocabSize, nLayer: m.nLayer, nHead: m.nHead, dModel: m.dModel, blockSize: m.blockSize)
        self.gpt = gpt
        let cost = Self.costs(gpt, seqLen: t.seqLen)
        if let counts = p.explicitStageLayers {
            partition = .explicit(layerCounts: counts, blockCost: cost.block, first: cost.first, last: cost.last)
        } else {
            partition = .balanced(layerCount: m.nLayer, stages: stages * chunks, blockCost: cost.block, first: cost.first,
                                  last: cost.last)
        }
        plan = try PipelinePlanner.plan(schedule: p.pipelineSchedule, stages: stages, microbatches: t.microbatches,
                                        virtualStages: chunks)
    }

    /// Training FLOPs per token of a block, of the first stage's extra work (embeddings) and of the last's
    /// (ln_f, the LM head and the loss): 6 × parameters per token, plus attention's 12 · seq · d per block.
    static func costs(_ c: GPTConfig, seqLen: Int) -> (block: Double, first: Double, last: Double) {
        let d = Double(c.dModel)
        return (72 * d * d + 6 * Double(seqLen) * d, 2 * d, 6 * Double(c.vocabSize) * d + 10 * d)
    }

    /// The part of the model pipeline rank `rank` holds.
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
            let count = GPTParameters.specs(gpt, stage: stage(rank: r)).reduce(0) { $0 + $1.count }
            s += "\n    stage \(r): \(stage(rank: r)) (\(fmt(Double(count) / 1e6, 2))M parameters)"
        }
        return s
    }
}

extension Communicator {
    /// Sums the tied token-embedding gradient between the first and last pipeline stage (`embedding` group).
    func reduceTiedEmbedding(_ grads: ParameterSet, count: Int) throws {
        guard size > 1 else { return }
        try allreduce(grads["transformer.wte.weight"], count: count, label: "tied wte gradient (first + last stage)")
    }
}

extension Trainer {
    /// The whole model's tensors from every pipeline stage, on world rank 0 (nil elsewhere). `source` picks
    /// the stage's parameters or gradients (already complete on the rank: reduced, ZeRO-gathered). Collective
    /// over the pipeline group of world rank 0; other ranks return at once.
    func gatherWholeModel(_ source: ParameterSet) -> ParameterSet? {
        guard let mesh, let layout = pipelineLayout, mesh.shape.pp > 1 else { return isRank0 ? source : nil }
        let c = mesh.coordinate
        guard c.dp == 0 && c.ring == 0 && c.ulysses == 0 else { return nil }
        let pipe = mesh.pipeline
        let whole = ParameterSet(specs: GPTParameters.specs(model.config))
        do {
            if pipe.rank == 0 {
                for r in 0..<layout.stages {
                    let set: ParameterSet
                    if r == 0 { set = source } else {
                        set = ParameterSet(specs: GPTParameters.specs(model.config, stage: layout.stage(rank: r)))
                        _ = try pipe.recv(set.storage.ptr, count: set.count, from: r, tag: 7000, label: "gather stage \(r)")
                    }
                    for (i, spec) in set.specs.enumerated() where r == 0 || spec.name != "transformer.wte.weight" {
                        whole[spec.name].update(from: set.pointer(i), count: spec.count)
                    }
                }
                return whole
            } else {
                try pipe.send(source.storage.ptr, count: source.count, to: 0, tag: 7000, label: "gather stage \(pipe.rank)")
                return nil
            }
        } catch { MPIRuntime.abort("\(error) while gathering the model to rank 0") }
    }
}
