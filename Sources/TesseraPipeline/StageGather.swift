// What only a pipeline has to do with whole tensors: the tied token embedding, which the first and the last
// stage each hold a copy of, and the whole model, which no single stage holds.

import TesseraComm
import TesseraModel

extension Communicator {
    /// Sums the tied token-embedding gradient between the first and last pipeline stage (the mesh's
    /// `embedding` group; alone on a middle stage, where it does nothing). The copies stay identical.
    public func reduceTiedEmbedding(_ grads: ParameterSet, name: String, count: Int) throws {
        guard size > 1 else { return }
        try allreduce(grads[name], count: count, label: "tied \(name) gradient (first + last stage)")
    }
}

public enum StageGather {
    /// The whole model's tensors from every stage of `layout`, on the pipeline group's rank 0 (nil elsewhere).
    /// `source` is this stage's parameters or gradients (already complete: reduced, ZeRO-gathered). Only the
    /// first pipeline of the mesh calls it (`ProcessMesh.isFirstReplica`); the first stage's copy of the tied
    /// embedding is the one kept. A collective over `pipeline`.
    public static func wholeModel(_ source: ParameterSet, layout: PipelineLayout, pipeline: Communicator) throws -> ParameterSet? {
        guard pipeline.rank == 0 else {
            try pipeline.send(source.storage.ptr, count: source.count, to: 0, tag: MessageTag.gatherStages,
                              label: "gather stage \(pipeline.rank)")
            return nil
        }
        let whole = ParameterSet(specs: ModelParameters.specs(layout.model))
        for r in 0..<layout.stages {
            let set: ParameterSet
            if r == 0 { set = source } else {
                set = ParameterSet(specs: ModelParameters.specs(layout.model, stage: layout.stage(rank: r)))
                _ = try pipeline.recv(set.storage.ptr, count: set.count, from: r, tag: MessageTag.gatherStages,
                                      label: "gather stage \(r)")
            }
            for (i, spec) in set.specs.enumerated() where r == 0 || spec.name != layout.model.tokenEmbeddingName {
                whole[spec.name].update(from: set.pointer(i), count: spec.count)
            }
        }
        return whole
    }
}
