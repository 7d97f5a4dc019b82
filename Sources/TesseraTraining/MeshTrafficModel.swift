// What each group of the mesh sends per step, from the config alone (for the placement and `tessera plan`):
// the sequence-parallel formulas of SequenceTraffic, the gradient bytes of the largest stage, one pipeline
// message per micro-batch and virtual stage each way, and the tied embedding's gradient.

import TesseraModel
import TesseraPipeline
import TesseraSequenceParallel
import TesseraTopology

extension MeshTraffic {
    public init(config: TesseraConfig) {
        self.init()
        let m = config.transformer, t = config.training, p = config.parallelism
        let micro = config.rankMicroBatch, steps = Double(t.microbatches)
        let layout = p.pp > 1 ? try? PipelineLayout(config: config) : nil
        let stages = (0..<max(p.pp, 1)).map { layout?.stage(rank: $0) ?? .whole(m) }
        let layers = stages.map { $0.layers.count }.max() ?? m.nLayer
        let sp = config.precision
        ulyssesBytes = steps * SequenceTraffic.ulyssesBytes(seq: t.seqLen, ring: p.ring, ulysses: p.ulysses, layers: layers, dModel: m.dModel,
                                                            kvWidth: m.nKVHead * m.headDim, batch: micro, precision: sp)
        ulyssesCalls = steps * Double(SequenceTraffic.ulyssesCalls(ulysses: p.ulysses, layers: layers))
        ringBytes = steps * SequenceTraffic.ringBytes(seq: t.seqLen, ring: p.ring, ulysses: p.ulysses, layers: layers,
                                                      kvWidth: m.nKVHead * m.headDim, batch: micro, precision: sp)
        ringMessages = steps * Double(SequenceTraffic.ringMessages(ring: p.ring, layers: layers))
        let floats = stages.map { ModelParameters.specs(m, stage: $0).reduce(0) { $0 + ($1.count + 15) / 16 * 16 } }.max() ?? 0
        gradientBytes = Double(4 * floats)
        gradientBuckets = (gradientBytes / (p.bucketMb * 1024 * 1024)).rounded(.up)
        if p.pp > 1 {
            let tokens = t.seqLen / (p.ring * p.ulysses)
            pipelineBytes = Double(micro * tokens * m.dModel * config.pipelineWire.operandBytes)
            pipelineMessages = steps * Double(p.virtualStages)
            pipelineWrapMessages = steps * Double(p.virtualStages - 1)
            if m.tied { embeddingBytes = Double(4 * m.vocabSize * m.dModel) }
        }
    }

    /// One line per group that sends: "ring 12.0 MiB in 36 messages per rank".
    public var describe: String {
        func mib(_ b: Double) -> String { b >= 1048576 ? String(format: "%.1f MiB", b / 1048576) : String(format: "%.1f KiB", b / 1024) }
        var out: [String] = []
        if ulyssesBytes > 0 { out.append("ulysses all-to-alls \(mib(ulyssesBytes)) per rank in \(Int(ulyssesCalls)) calls") }
        if ringBytes > 0 { out.append("ring \(mib(ringBytes)) per rank to its neighbour in \(Int(ringMessages)) messages") }
        if gradientBytes > 0 { out.append("gradient reduction over \(mib(gradientBytes)) of gradients in \(Int(gradientBuckets)) bucket(s)") }
        if pipelineMessages > 0 {
            out.append("pipeline \(mib(pipelineBytes)) a message, \(Int(pipelineMessages)) each way per boundary"
                       + (pipelineWrapMessages > 0 ? " (\(Int(pipelineWrapMessages)) from the last stage to the first)" : ""))
        }
        if embeddingBytes > 0 { out.append("tied embedding \(mib(embeddingBytes)) between the first and last stage") }
        return out.joined(separator: "; ")
    }
}
