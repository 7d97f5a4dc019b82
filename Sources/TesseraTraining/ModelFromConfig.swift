// What the config's sections mean for the model's modules: the model's shape, the seed, the pipeline layout.

import TesseraKernels
import TesseraModel
import TesseraPipeline

extension TesseraConfig {
    /// The model's architecture (`[model]`, validated by the loader).
    public var transformer: TransformerConfig { model.transformer }
    /// `training.seed` as the initialiser's and the data order's seed.
    public var seed: UInt64 { UInt64(bitPattern: Int64(training.seed)) }
    /// `training.precision` (validated by the loader).
    public var precision: Precision { Precision(rawValue: training.precision) ?? .fp32 }
    /// The format of the activations and gradients between pipeline stages (`parallelism.pipeline_precision`;
    /// "auto" follows `training.precision`).
    public var pipelineWire: Precision { Precision(rawValue: parallelism.pipelinePrecision) ?? precision }
}

extension PipelineLayout {
    /// The layout `[parallelism]` describes (pp stages, schedule, virtual stages, explicit stage layers).
    public init(config: TesseraConfig) throws {
        let p = config.parallelism
        try self.init(model: config.transformer, seqLen: config.training.seqLen, stages: p.pp, schedule: p.pipelineSchedule,
                      microbatches: config.training.microbatches, virtualStages: p.virtualStages,
                      explicitStageLayers: p.explicitStageLayers)
    }
}

extension ModelConfig {
    /// The architecture these keys describe. Llama's default MLP width is Meta's rule: 2/3 of 4·d, rounded up
    /// to a multiple of 256 (torchtitan's `multiple_of`).
    public var transformer: TransformerConfig {
        guard family == ModelFamily.llama.rawValue else {
            return TransformerConfig(vocabSize: vocabSize, nLayer: nLayer, nHead: nHead, dModel: dModel, blockSize: blockSize)
        }
        let hidden = intermediateSize > 0 ? intermediateSize : (8 * dModel / 3 + 255) / 256 * 256
        return .llama(vocabSize: vocabSize, nLayer: nLayer, nHead: nHead, nKVHead: nKVHead > 0 ? nKVHead : nHead,
                      dModel: dModel, intermediate: hidden, blockSize: blockSize, rmsEps: Float(rmsNormEps),
                      ropeTheta: ropeTheta, tied: tieWordEmbeddings)
    }
}
