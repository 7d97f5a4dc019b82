// The configuration schema: one struct per TOML section, every field with its default.
// The TOML key of a field is the snake_case of its Swift name (see ConfigKeys.swift for the mapping
// and docs/config.md for the meaning of every key). Defaults live only in the initialisers below.

import TesseraComm
import TesseraModel

/// The root of a Tessera configuration. `TesseraConfig()` is the all-defaults configuration.
public struct TesseraConfig: Sendable, Equatable {
    public var job: JobConfig
    public var model: ModelConfig
    public var training: TrainingConfig
    public var optimizer: OptimizerConfig
    public var data: DataConfig
    public var sample: SampleConfig
    public var parallelism: ParallelismConfig
    public var checkpoint: CheckpointConfig
    public var memory: MemoryConfig
    public var metrics: MetricsConfig

    public init(job: JobConfig = .init(), model: ModelConfig = .init(), training: TrainingConfig = .init(),
                optimizer: OptimizerConfig = .init(), data: DataConfig = .init(), sample: SampleConfig = .init(),
                parallelism: ParallelismConfig = .init(), checkpoint: CheckpointConfig = .init(),
                memory: MemoryConfig = .init(), metrics: MetricsConfig = .init()) {
        self.job = job
        self.model = model
        self.training = training
        self.optimizer = optimizer
        self.data = data
        self.sample = sample
        self.parallelism = parallelism
        self.checkpoint = checkpoint
        self.memory = memory
        self.metrics = metrics
    }
}

/// `[job]`: naming and output location of a run.
public struct JobConfig: Sendable, Equatable {
    /// Human-readable run name.
    public var name: String
    /// Directory for metrics, TensorBoard files and other run outputs.
    public var outputDir: String

    public init(name: String = "tessera", outputDir: String = "runs/default") {
        self.name = name
        self.outputDir = outputDir
    }
}

/// `[model]`: the architecture (family and sizes).
public struct ModelConfig: Sendable, Equatable {
    /// Allowed values of `family`.
    public static let familyValues = ModelFamily.allCases.map(\.rawValue)
    /// "gpt2" or "llama".
    public var family = "gpt2"
    public var vocabSize: Int
    public var nLayer: Int
    public var nHead: Int
    public var dModel: Int
    /// Maximum number of positions (rows of the position embedding `wpe`).
    public var blockSize: Int
    /// A Hugging Face GPT-2 directory (config.json, model.safetensors) whose weights start training; empty:
    /// initialise from the seed. A resumed checkpoint takes precedence.
    public var initFrom: String = ""
    /// Llama: key/value heads (0: as many as n_head), the MLP's hidden size (0: the family's default), RMSNorm's
    /// epsilon, RoPE's base, and whether the LM head is the token embedding (true, as GPT-2 and Llama 3.2's small
    /// models; false gives Llama an lm_head of its own). GPT-2 fixes all of these.
    public var nKVHead = 0
    public var intermediateSize = 0
    public var rmsNormEps = 1e-5
    public var ropeTheta = 10_000.0
    public var tieWordEmbeddings = true

    public init(vocabSize: Int = 256, nLayer: Int = 4, nHead: Int = 4, dModel: Int = 128, blockSize: Int = 256) {
        self.vocabSize = vocabSize
        self.nLayer = nLayer
        self.nHead = nHead
        self.dModel = dModel
        self.blockSize = blockSize
    }
}

/// `[training]`: the training loop.
public struct TrainingConfig: Sendable, Equatable {
    /// Allowed values of `onNonfinite`.
    public static let onNonfiniteValues = ["stop", "skip"]
    /// Allowed values of `precision`.
    public static let precisionValues = ["fp32", "bf16"]

    public var steps: Int
    /// Global batch in sequences, summed over data-parallel ranks and microbatches.
    public var batchSize: Int
    public var seqLen: Int
    /// Gradient-accumulation steps per optimizer step.
    public var microbatches: Int
    public var seed: Int
    /// Compute threads per rank; 0 = the cores available to this rank.
    public var threads: Int
    public var logEvery: Int
    /// Evaluate every this many steps; 0 = never.
    public var evalEvery: Int
    public var evalBatches: Int
    /// What a step whose loss or gradient norm is not finite does: one of `onNonfiniteValues`. "stop": no
    /// update, the run ends with an error; "skip": the step's update is dropped and the run goes on.
    public var onNonfinite: String
    /// Under "skip": the run stops after this many consecutive skipped steps.
    public var maxSkipped: Int
    /// Number format of the matrix products: "fp32", or "bf16" (bf16 operands, fp32 accumulation; master
    /// weights, gradients, optimizer state, softmax and normalisation statistics stay fp32).
    public var precision: String
    /// Allowed values of `layout`.
    public static let layoutValues = ["manual", "auto"]
    /// "manual": the [parallelism] keys as written; "auto": `tessera train` plans the layout for the job's ranks
    /// at start (`tessera plan --auto`'s first choice) and sets [parallelism], micro-batches and memory policy.
    public var layout: String

    public init(steps: Int = 100, batchSize: Int = 8, seqLen: Int = 256, microbatches: Int = 1, seed: Int = 1337,
                threads: Int = 0, logEvery: Int = 10, evalEvery: Int = 50, evalBatches: Int = 4,
                onNonfinite: String = "stop", maxSkipped: Int = 5, precision: String = "fp32", layout: String = "manual") {
        self.layout = layout
        self.steps = steps
        self.batchSize = batchSize
        self.seqLen = seqLen
        self.microbatches = microbatches
        self.seed = seed
        self.threads = threads
        self.logEvery = logEvery
        self.evalEvery = evalEvery
        self.evalBatches = evalBatches
        self.onNonfinite = onNonfinite
        self.maxSkipped = maxSkipped
        self.precision = precision
    }
}

/// `[optimizer]`: AdamW and the learning-rate schedule.
public struct OptimizerConfig: Sendable, Equatable {
    /// Allowed values of `decay`.
    public static let decayValues = ["cosine", "linear", "constant"]

    /// Peak learning rate.
    public var lr: Double
    /// Final learning rate as a fraction of `lr`.
    public var minLrRatio: Double
    public var warmupSteps: Int
    /// One of `decayValues`.
    public var decay: String
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// Global gradient-norm clip; 0 = off.
    public var gradClip: Double

    public init(lr: Double = 1e-3, minLrRatio: Double = 0.1, warmupSteps: Int = 10, decay: String = "cosine",
                beta1: Double = 0.9, beta2: Double = 0.95, eps: Double = 1e-8, weightDecay: Double = 0.1,
                gradClip: Double = 1.0) {
        self.lr = lr
        self.minLrRatio = minLrRatio
        self.warmupSteps = warmupSteps
        self.decay = decay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.gradClip = gradClip
    }
}

/// `[data]`: training and validation tokens.
public struct DataConfig: Sendable, Equatable {
    /// Allowed values of `format`.
    public static let formatValues = ["auto", "text", "bin"]

    /// One of `formatValues`.
    public var format: String
    /// Path of the training data; for `bin` data also a glob such as `data/x/train_*.bin`.
    public var train: String
    /// Path (or glob) of the validation data; empty = hold out the tail of `train`.
    public var val: String
    /// Fraction of `train` held out for validation when `val` is empty.
    public var valFraction: Double
    /// Path of the tokenizer.json the data was prepared with; empty = none (byte-level text or unknown ids).
    /// Samples and `tessera generate` encode prompts and decode output with it.
    public var tokenizer: String
    /// Allowed values of `packing`.
    public static let packingValues = ["window", "documents"]
    /// "window": each row a window cut anywhere in the corpus; "documents": rows packed from whole documents with
    /// block-causal attention (DocumentPacker).
    public var packing: String
    /// The token before every document (what cuts the corpus into documents); -1: the tokenizer's <|endoftext|>.
    public var documentToken: Int
    /// Variable-length sequences (with packing = "documents"): most tokens one rank holds in one forward; a step's
    /// global batch is training.batch_size × training.seq_len tokens of whole documents of up to training.seq_len
    /// tokens, and longer ones than this run as rings over several ranks. 0: fixed rows (off).
    public var maxTokensPerRank: Int
    /// Allowed values of `schedule`.
    public static let scheduleValues = ["aware", "ring", "ring_dp", "dp", "dp_padded"]
    /// Who runs which sequence under max_tokens_per_rank: "aware" (the data-aware scheduler), or the static layouts
    /// it is measured against: "ring" (every sequence over the ring of all ranks), "ring_dp" (every sequence over a
    /// ring of the size training.seq_len needs, data parallel over those rings), "dp" (sequences truncated to
    /// max_tokens_per_rank, packed), "dp_padded" (truncated, one per row, padded).
    public var schedule: String
    /// Allowed values of `costWeights`.
    public static let costWeightsValues = ["flops", "measured"]
    /// The data-aware schedule's weights of an attention pair against a token: "flops" (from the model's FLOPs,
    /// DocumentCost(model:); the same plans in every run) or "measured" (fitted to the items' measured times from
    /// the run's second step on, DocumentCostFit; plans then depend on timings, results only by rounding).
    public var costWeights: String
    /// Allowed values of `groupAttention`.
    public static let groupAttentionValues = ["ring", "ulysses"]
    /// How a group of ranks runs one long sequence under max_tokens_per_rank: "ring" (zigzag ring attention) or
    /// "ulysses" (all-to-alls to whole sequences of fewer heads; the heads must divide over the largest group).
    public var groupAttention: String

    public init(format: String = "auto", train: String = "", val: String = "", valFraction: Double = 0.1,
                tokenizer: String = "", packing: String = "window", documentToken: Int = -1, maxTokensPerRank: Int = 0,
                schedule: String = "aware", groupAttention: String = "ring", costWeights: String = "flops") {
        self.groupAttention = groupAttention; self.costWeights = costWeights
        self.maxTokensPerRank = maxTokensPerRank
        self.schedule = schedule
        self.format = format
        self.train = train
        self.val = val
        self.valFraction = valFraction
        self.tokenizer = tokenizer
        self.packing = packing
        self.documentToken = documentToken
    }
}

/// `[sample]`: text generated at the end of a run.
public struct SampleConfig: Sendable, Equatable {
    /// Tokens to generate; 0 = no sample.
    public var tokens: Int
    public var prompt: String
    public var temperature: Double
    /// Sample from the k most likely tokens; 0 = off.
    public var topK: Int

    public init(tokens: Int = 200, prompt: String = "\n", temperature: Double = 0.8, topK: Int = 0) {
        self.tokens = tokens
        self.prompt = prompt
        self.temperature = temperature
        self.topK = topK
    }
}

/// `[parallelism]`: how ranks are arranged.
public struct ParallelismConfig: Sendable, Equatable {
    /// Allowed values of `pipelineSchedule`.
    public static let pipelineScheduleValues = ["gpipe", "1f1b", "interleaved"]
    /// Allowed values of `pipelinePrecision`.
    public static let pipelinePrecisionValues = ["auto", "fp32", "bf16"]

    /// Pipeline stages.
    public var pp: Int
    /// Data-parallel replicas.
    public var dp: Int
    /// Ring-attention (context-parallel) degree.
    public var ring: Int
    /// Ulysses sequence-parallel degree.
    public var ulysses: Int
    /// ZeRO stage: 0 = off, 1 = shard optimizer state.
    public var zero: Int
    /// One of `pipelineScheduleValues`.
    public var pipelineSchedule: String
    /// The number format pipeline stages send activations and gradients in: "auto" = `training.precision`.
    public var pipelinePrecision: String
    /// Model chunks per pipeline rank (interleaved schedule).
    public var virtualStages: Int
    /// Layers of each virtual stage in order, comma-separated ("3,3,2"); empty = balanced by cost.
    public var stageLayers: String
    /// Gradient all-reduce bucket size in MiB.
    public var bucketMb: Double

    /// The explicit split of `stageLayers` (nil when empty or malformed; validation reports the latter).
    public var explicitStageLayers: [Int]? {
        let parts = stageLayers.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard !stageLayers.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
        let counts = parts.compactMap { Int($0) }
        return counts.count == parts.count ? counts : nil
    }
    /// Seconds before a stalled collective is reported.
    public var timeoutS: Double
    /// Which rank takes which place in the mesh: "auto" (on several hosts, the placement with the least
    /// estimated communication for the measured links), "rank" (world rank order, the default order), or the
    /// four dimensions innermost first ("dp,ring,ulysses,pp"; the ranks in world order).
    public var placement: String

    /// The order `placement` names, nil for "auto" and "rank" (and for a malformed value: validation reports it).
    public var explicitOrder: [MeshDimension]? { MeshDimension.order(placement) }

    public init(pp: Int = 1, dp: Int = 1, ring: Int = 1, ulysses: Int = 1, zero: Int = 0,
                pipelineSchedule: String = "1f1b", virtualStages: Int = 1, stageLayers: String = "",
                bucketMb: Double = 25, timeoutS: Double = 300, pipelinePrecision: String = "auto", placement: String = "auto") {
        self.placement = placement
        self.stageLayers = stageLayers
        self.pipelinePrecision = pipelinePrecision
        self.pp = pp
        self.dp = dp
        self.ring = ring
        self.ulysses = ulysses
        self.zero = zero
        self.pipelineSchedule = pipelineSchedule
        self.virtualStages = virtualStages
        self.bucketMb = bucketMb
        self.timeoutS = timeoutS
    }
}

/// `[checkpoint]`: saving and restoring state.
public struct CheckpointConfig: Sendable, Equatable {
    /// Allowed values of `mode`.
    public static let modeValues = ["lazy", "sync"]

    /// Checkpoint directory; empty = `<job.output_dir>/checkpoints`.
    public var dir: String
    /// Save every this many steps; 0 = never.
    public var every: Int
    /// One of `modeValues`.
    public var mode: String
    /// Checkpoints kept on disk.
    public var keep: Int
    /// Second level: a directory (e.g. a shared file system) that rank 0 copies every committed checkpoint
    /// to in the background; empty = off.
    public var persistDir: String

    public init(dir: String = "", every: Int = 0, mode: String = "lazy", keep: Int = 3, persistDir: String = "") {
        self.dir = dir
        self.every = every
        self.mode = mode
        self.keep = keep
        self.persistDir = persistDir
    }
}

/// `[memory]`: activation memory policy.
public struct MemoryConfig: Sendable, Equatable {
    /// Allowed values of `policy`.
    public static let policyValues = ["keep", "full", "selective", "offload", "auto"]

    /// One of `policyValues`.
    public var policy: String
    /// Activation memory budget in bytes; 0 = unlimited.
    public var activationBudget: Int
    /// Directory for offloaded activations; empty = `<job.output_dir>/offload`.
    public var offloadDir: String
    /// One policy per layer ("full*4,keep*2"), overriding `policy`; empty = `policy` for every layer.
    public var layerPolicy: String
    /// Refuse, before anything is allocated, a job whose predicted memory per rank exceeds what the rank can
    /// have (docs/memory.md, "Memory preflight"); false = start anyway.
    public var preflight: Bool

    public init(policy: String = "keep", activationBudget: Int = 0, offloadDir: String = "", layerPolicy: String = "",
                preflight: Bool = true) {
        self.policy = policy
        self.activationBudget = activationBudget
        self.offloadDir = offloadDir
        self.layerPolicy = layerPolicy
        self.preflight = preflight
    }
}

/// `[metrics]`: where metrics are written.
public struct MetricsConfig: Sendable, Equatable {
    /// JSON-lines metrics file; empty = `<job.output_dir>/metrics.jsonl`.
    public var path: String
    public var tensorboard: Bool
    /// TensorBoard event directory; empty = `<job.output_dir>/tensorboard`.
    public var tensorboardDir: String

    public init(path: String = "", tensorboard: Bool = true, tensorboardDir: String = "") {
        self.path = path
        self.tensorboard = tensorboard
        self.tensorboardDir = tensorboardDir
    }
}

extension TesseraConfig {
    /// The sequences of one micro-batch on one rank of a fixed-length run: training.batch_size / (dp · microbatches),
    /// at least 1. The data loader, the memory preflight, the traffic model and the planner all read it here.
    public var rankMicroBatch: Int { max(training.batchSize / max(parallelism.dp * training.microbatches, 1), 1) }

    /// `metrics.path`, or `<job.output_dir>/metrics.jsonl` when it is empty.
    public var metricsPath: String {
        metrics.path.isEmpty ? Self.join(job.outputDir, "metrics.jsonl") : metrics.path
    }

    /// `metrics.tensorboard_dir`, or `<job.output_dir>/tensorboard` when it is empty.
    public var tensorboardDir: String {
        metrics.tensorboardDir.isEmpty ? Self.join(job.outputDir, "tensorboard") : metrics.tensorboardDir
    }

    /// `checkpoint.dir`, or `<job.output_dir>/checkpoints` when it is empty.
    public var checkpointDir: String {
        checkpoint.dir.isEmpty ? Self.join(job.outputDir, "checkpoints") : checkpoint.dir
    }

    /// `memory.offload_dir`, or `<job.output_dir>/offload` when it is empty.
    public var offloadDir: String {
        memory.offloadDir.isEmpty ? Self.join(job.outputDir, "offload") : memory.offloadDir
    }

    private static func join(_ dir: String, _ name: String) -> String {
        if dir.isEmpty { return name }
        return dir.hasSuffix("/") ? dir + name : dir + "/" + name
    }
}
