// `--dump-grads FILE`: step 1's reduced gradients of the whole model, for comparing layouts. And the whole
// model on world rank 0 under pipeline parallelism (for sampling), gathered from the stages.

import TesseraComm
import TesseraModel
import TesseraPipeline

extension Trainer {
    /// Rank 0 writes the full reduced gradient (ZeRO: gathered from the shards; pipeline: from every stage)
    /// as safetensors.
    func dumpGradients(_ path: String) {
        let stage = model.grads.sameLayout(), full = stage.storage
        if let dpl = dataParallel, dpl.zero {
            let own = dpl.ownedRange
            (full.ptr + own.lowerBound).update(from: dpl.reducedGradients, count: own.count)
            dpl.orAbort { try dpl.group.allgather(inPlace: full.ptr, counts: dpl.partitions.map(\.count),
                                                         displacements: dpl.partitions.map(\.lowerBound), label: "gradient dump") }
        } else {
            full.ptr.update(from: model.grads.storage.ptr, count: model.grads.count)
        }
        guard let whole = gatherWholeModel(stage), isRank0 else { return }
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        for (i, spec) in whole.specs.enumerated() {
            tensors.append((spec.name, spec.shape, UnsafeBufferPointer(start: whole.pointer(i), count: spec.count)))
        }
        do { try SafeTensorsFile.write(path: path, tensors: tensors) } catch {
            log("tessera: --dump-grads \(path): cannot write the gradients there (expected a writable file path): \(error)")
        }
    }

    /// The whole model's tensors on world rank 0 (nil elsewhere). `source` picks the stage's parameters or
    /// gradients (already complete on the rank: reduced, ZeRO-gathered). A collective over the first pipeline.
    func gatherWholeModel(_ source: ParameterSet) -> ParameterSet? {
        guard let mesh, let layout = pipelineLayout, mesh.shape.pp > 1 else { return isRank0 ? source : nil }
        guard mesh.isFirstReplica else { return nil }
        do { return try StageGather.wholeModel(source, layout: layout, pipeline: mesh.pipeline) } catch {
            MPIRuntime.abort("\(error) while gathering the model to rank 0")
        }
    }
}
