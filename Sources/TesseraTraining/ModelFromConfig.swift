// What the config's sections mean for the model's modules: the model's shape, the seed, the pipeline layout.

import TesseraKernels
import TesseraModel
import TesseraPipeline

extension TesseraConfig {
    /// The model's shape (`[model]`).
    public var gpt: GPTConfig {
        GPTConfig(vocabSize: model.vocabSize, nLayer: model.nLayer, nHead: model.nHead, dModel: model.dModel,
                  blockSize: model.blockSize)
    }
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
        try self.init(gpt: config.gpt, seqLen: config.training.seqLen, stages: p.pp, schedule: p.pipelineSchedule,
                      microbatches: config.training.microbatches, virtualStages: p.virtualStages,
                      explicitStageLayers: p.explicitStageLayers)
    }
}
