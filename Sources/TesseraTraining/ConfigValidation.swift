// Validation of a decoded configuration: value ranges, allowed strings, relations between keys,
// and the existence of data files. Every message names its source, the full key(s), what was expected
// and what was found.

import Foundation
import TesseraMemory
import TesseraSequenceParallel
import TesseraTokenizer

extension TesseraConfig {
    /// Checks every value and that the data files exist; throws a ConfigError listing all problems.
    /// `source` names this configuration in messages (`load` does this itself, naming file or command line).
    public func validate(source: String = "configuration") throws {
        try validate(origins: [:], fallbackSource: source)
    }

    /// `origins` maps explicitly set keys to their source; other keys are attributed to `fallbackSource`.
    /// The checks that need no files (a layout the planner considers, before any data exists).
    public func validateWithoutFiles(source: String = "layout") throws {
        try validate(origins: [:], fallbackSource: source, dataFiles: false)
    }

    func validate(origins: [String: String], fallbackSource: String, dataFiles: Bool = true) throws {
        var checks = ConfigChecks(config: self, origins: origins, fallbackSource: fallbackSource)
        checks.checkModel()
        checks.checkTraining()
        checks.checkOptimizer()
        checks.checkData()
        checks.checkSample()
        checks.checkParallelism()
        checks.checkCheckpointAndMemory()
        checks.checkShapes()
        if dataFiles { checks.checkDataFiles(); checks.checkTokenizer(); checks.checkInitFrom() }
        guard checks.errors.isEmpty else { throw ConfigError(lines: checks.errors) }
    }
}

/// The individual checks; each appends to `errors` instead of stopping at the first problem.
struct ConfigChecks {
    let config: TesseraConfig
    let origins: [String: String]
    let fallbackSource: String
    var errors: [String] = []

    init(config: TesseraConfig, origins: [String: String], fallbackSource: String) {
        self.config = config
        self.origins = origins
        self.fallbackSource = fallbackSource
    }

    // MARK: Sections

    mutating func checkModel() {
        let m = config.model
        integer("model.vocab_size", m.vocabSize, in: 1...Int(Int32.max), why: " (token ids are int32)")
        integer("model.n_layer", m.nLayer, atLeast: 1)
        integer("model.n_head", m.nHead, atLeast: 1)
        integer("model.d_model", m.dModel, atLeast: 1)
        integer("model.block_size", m.blockSize, atLeast: 1)
        oneOf("model.family", m.family, ModelConfig.familyValues)
        integer("model.n_kv_head", m.nKVHead, atLeast: 0)
        integer("model.intermediate_size", m.intermediateSize, atLeast: 0)
        number("model.rms_norm_eps", m.rmsNormEps, m.rmsNormEps > 0 && m.rmsNormEps < 1, expected: "in (0, 1)")
        number("model.rope_theta", m.ropeTheta, m.ropeTheta > 1 && m.ropeTheta.isFinite, expected: "> 1")
        if m.family == "gpt2" {
            // GPT-2 fixes what these keys choose; a value that changes the model needs the Llama family.
            let fixed: [(String, Bool)] = [("model.n_kv_head", m.nKVHead != 0 && m.nKVHead != m.nHead),
                                           ("model.intermediate_size", m.intermediateSize != 0 && m.intermediateSize != 4 * m.dModel),
                                           ("model.tie_word_embeddings", !m.tieWordEmbeddings)]
            for (key, set) in fixed where set {
                fail([key, "model.family"], "\(key) applies to model.family = \"llama\" only: GPT-2 has n_kv_head = n_head, "
                     + "intermediate_size = 4 × d_model and an LM head tied to wte; set model.family = \"llama\" or remove the key")
            }
        }
    }

    mutating func checkTraining() {
        let t = config.training
        integer("training.steps", t.steps, atLeast: 1)
        integer("training.batch_size", t.batchSize, atLeast: 1)
        integer("training.seq_len", t.seqLen, atLeast: 1)
        integer("training.microbatches", t.microbatches, atLeast: 1)
        integer("training.threads", t.threads, atLeast: 0)
        integer("training.log_every", t.logEvery, atLeast: 1)
        integer("training.eval_every", t.evalEvery, atLeast: 0)
        if t.evalEvery > 0 { integer("training.eval_batches", t.evalBatches, atLeast: 1) }
        oneOf("training.on_nonfinite", t.onNonfinite, TrainingConfig.onNonfiniteValues)
        integer("training.max_skipped", t.maxSkipped, atLeast: 1)
        oneOf("training.precision", t.precision, TrainingConfig.precisionValues)
        oneOf("training.layout", t.layout, TrainingConfig.layoutValues)
    }

    mutating func checkOptimizer() {
        let o = config.optimizer
        number("optimizer.lr", o.lr, o.lr > 0, expected: "> 0")
        number("optimizer.min_lr_ratio", o.minLrRatio, (0...1).contains(o.minLrRatio), expected: "in [0, 1]")
        integer("optimizer.warmup_steps", o.warmupSteps, atLeast: 0)
        oneOf("optimizer.decay", o.decay, OptimizerConfig.decayValues)
        number("optimizer.beta1", o.beta1, (0..<1).contains(o.beta1), expected: "in [0, 1)")
        number("optimizer.beta2", o.beta2, (0..<1).contains(o.beta2), expected: "in [0, 1)")
        number("optimizer.eps", o.eps, o.eps > 0, expected: "> 0")
        number("optimizer.weight_decay", o.weightDecay, o.weightDecay >= 0, expected: ">= 0")
        number("optimizer.grad_clip", o.gradClip, o.gradClip >= 0, expected: ">= 0 (0 = off)")
    }

    mutating func checkData() {
        let d = config.data
        oneOf("data.format", d.format, DataConfig.formatValues)
        if d.train.isEmpty {
            fail(["data.train"], "key 'data.train' expects the path of the training data, found an empty string")
        }
        let fraction = d.valFraction
        number("data.val_fraction", fraction, fraction > 0 && fraction < 1, expected: "in (0, 1)")
        oneOf("data.packing", d.packing, DataConfig.packingValues)
        integer("data.document_token", d.documentToken, atLeast: -1)
        integer("data.max_tokens_per_rank", d.maxTokensPerRank, atLeast: 0)
        oneOf("data.schedule", d.schedule, DataConfig.scheduleValues)
        oneOf("data.group_attention", d.groupAttention, DataConfig.groupAttentionValues)
        oneOf("data.cost_weights", d.costWeights, DataConfig.costWeightsValues)
        if d.costWeights == "measured", d.maxTokensPerRank == 0 || d.schedule != "aware" {
            fail(["data.cost_weights", "data.schedule", "data.max_tokens_per_rank"], "data.cost_weights = \"measured\" weighs the "
                 + "data-aware schedule's work: expected data.max_tokens_per_rank > 0 and data.schedule = \"aware\", found "
                 + "\(d.maxTokensPerRank) and \(String(reflecting: d.schedule))")
        }
        if d.maxTokensPerRank == 0, d.groupAttention != "ring" {
            fail(["data.group_attention", "data.max_tokens_per_rank"], "data.group_attention = \(String(reflecting: d.groupAttention)) "
                 + "runs the long sequences of variable-length documents and has no effect without data.max_tokens_per_rank > 0")
        }
        if d.maxTokensPerRank == 0, d.schedule != "aware" {
            fail(["data.schedule", "data.max_tokens_per_rank"], "data.schedule = \(String(reflecting: d.schedule)) plans variable-length "
                 + "documents and has no effect without data.max_tokens_per_rank > 0")
        }
        if d.documentToken >= config.model.vocabSize {
            fail(["data.document_token", "model.vocab_size"], "data.document_token = \(d.documentToken) is not a token of the model: "
                 + "expected -1 or below model.vocab_size = \(config.model.vocabSize)")
        }
        if d.packing == "documents" && d.documentToken < 0 && d.tokenizer.isEmpty {
            fail(["data.packing", "data.document_token"], "data.packing = \"documents\" needs the token that starts each document: "
                 + "set data.document_token, or data.tokenizer (its <|endoftext|>, which `tessera prepare --tokenizer` writes before every document)")
        }
    }

    /// data.max_tokens_per_rank > 0: documents of variable length, the replicas a power of two forming the sequence
    /// groups themselves, and the longest sequence fitting all of them.
    mutating func checkVariableLength() {
        let d = config.data, t = config.training, p = config.parallelism, c = d.maxTokensPerRank
        let key = "data.max_tokens_per_rank"
        if d.packing != "documents" {
            fail([key, "data.packing"], "\(key) = \(c) trains on whole documents: expected data.packing = \"documents\", "
                 + "found \(String(reflecting: d.packing))")
        }
        if p.pp != 1 || p.ring != 1 || p.ulysses != 1 {
            fail([key, "parallelism.pp", "parallelism.ring", "parallelism.ulysses"],
                 "\(key) = \(c) forms its sequence groups per step out of the data-parallel ranks: expected parallelism.pp, "
                 + "ring and ulysses = 1, found \(p.pp), \(p.ring), \(p.ulysses)")
        }
        if p.dp >= 1, !DocumentScheduler.isPowerOfTwo(p.dp) {
            fail([key, "parallelism.dp"], "\(key) = \(c) groups ranks in powers of two: expected parallelism.dp a power of two, found \(p.dp)")
        }
        if t.microbatches != 1 {
            fail([key, "training.microbatches"], "\(key) = \(c): the scheduler decides each rank's micro-batches; expected "
                 + "training.microbatches = 1, found \(t.microbatches)")
        }
        if c == 1 { fail([key], "key '\(key)' expects 0 (off) or at least 2 tokens, found \(c)") }
        let m = config.model, kv = m.nKVHead > 0 ? m.nKVHead : m.nHead
        // The largest group the schedule may form (every size up to dp for aware, dp for ring, seq_len's for ring_dp).
        let largest = p.dp > 1 && DocumentScheduler.isPowerOfTwo(p.dp) && c >= 2 ? DocumentSteps.groupSizes(config).max() ?? 1 : 1
        if d.groupAttention == "ulysses", largest > 1, m.nHead >= 1, m.nHead % largest != 0 || kv % largest != 0 {
            fail(["data.group_attention", "model.n_head", "model.n_kv_head", "parallelism.dp", "data.schedule"],
                 "data.group_attention = \"ulysses\" splits the heads of a long sequence over up to \(largest) ranks (the largest "
                 + "group of data.schedule = \(String(reflecting: d.schedule)) on parallelism.dp = \(p.dp)): "
                 + "expected model.n_head (\(m.nHead)) and the key/value heads (\(kv)) divisible by \(largest)")
        }
        if config.training.layout == "auto" {
            fail([key, "training.layout"], "\(key) = \(c) plans its sequence groups per step; the layout planner (training.layout = "
                 + "\"auto\") plans fixed rows: expected training.layout = \"manual\" with parallelism.dp = the ranks")
        }
        // (The data-parallel schedules truncate sequences to what one rank holds instead.)
        if DocumentScheduler.isPowerOfTwo(p.dp), t.seqLen >= 1, c >= 2, !d.schedule.hasPrefix("dp"),
           DocumentScheduler.smallestGroup(t.seqLen, ranks: p.dp, capacity: c) == nil {
            let need = DocumentScheduler.ringLength(t.seqLen, size: p.dp) / p.dp
            fail([key, "training.seq_len", "parallelism.dp"],
                 "the longest sequence (training.seq_len = \(t.seqLen) tokens) over all parallelism.dp = \(p.dp) ranks needs \(need) "
                 + "tokens per rank; expected \(key) >= \(need), found \(c)")
        }
    }

    mutating func checkSample() {
        let s = config.sample
        integer("sample.tokens", s.tokens, atLeast: 0)
        number("sample.temperature", s.temperature, s.temperature > 0, expected: "> 0")
        integer("sample.top_k", s.topK, atLeast: 0)
    }

    mutating func checkParallelism() {
        let p = config.parallelism
        for (key, degree) in [("pp", p.pp), ("dp", p.dp), ("ring", p.ring), ("ulysses", p.ulysses)] {
            integer("parallelism." + key, degree, atLeast: 1)
        }
        integer("parallelism.zero", p.zero, in: 0...1, why: " (0 = off, 1 = shard optimizer state)")
        oneOf("parallelism.pipeline_schedule", p.pipelineSchedule, ParallelismConfig.pipelineScheduleValues)
        oneOf("parallelism.pipeline_precision", p.pipelinePrecision, ParallelismConfig.pipelinePrecisionValues)
        integer("parallelism.virtual_stages", p.virtualStages, atLeast: 1)
        if p.virtualStages > 1, p.pipelineSchedule != "interleaved" {
            fail(["parallelism.virtual_stages", "parallelism.pipeline_schedule"],
                 "parallelism.virtual_stages = \(p.virtualStages) needs parallelism.pipeline_schedule = "
                 + "\"interleaved\", found \(String(reflecting: p.pipelineSchedule))")
        }
        number("parallelism.bucket_mb", p.bucketMb, p.bucketMb > 0, expected: "> 0")
        number("parallelism.timeout_s", p.timeoutS, p.timeoutS > 0, expected: "> 0")
        if p.placement != "auto" && p.placement != "rank" && p.explicitOrder == nil {
            fail(["parallelism.placement"], "key 'parallelism.placement' expects \"auto\", \"rank\" or the four dimensions "
                 + "innermost first, e.g. \"dp,ring,ulysses,pp\", found \(String(reflecting: p.placement))")
        }
    }

    mutating func checkCheckpointAndMemory() {
        let c = config.checkpoint, m = config.memory
        integer("checkpoint.every", c.every, atLeast: 0)
        oneOf("checkpoint.mode", c.mode, CheckpointConfig.modeValues)
        integer("checkpoint.keep", c.keep, atLeast: 1)
        if !c.persistDir.isEmpty, ConfigPaths.same(c.persistDir, config.checkpointDir) {
            fail(["checkpoint.persist_dir"], "checkpoint.persist_dir = '\(c.persistDir)' is the checkpoint directory itself; "
                 + "expected a second location (e.g. a shared file system) or empty")
        }
        oneOf("memory.policy", m.policy, MemoryConfig.policyValues)
        integer("memory.activation_budget", m.activationBudget, atLeast: 0)
        if m.policy == "auto", m.activationBudget <= 0 {
            fail(["memory.policy", "memory.activation_budget"], "memory.policy = \"auto\" needs memory.activation_budget > 0 "
                 + "(bytes of activation memory per rank), found \(m.activationBudget)")
        }
        if m.policy == "auto", !m.layerPolicy.isEmpty {
            fail(["memory.policy", "memory.layer_policy"], "memory.layer_policy = \(String(reflecting: m.layerPolicy)) fixes every "
                 + "layer's policy, but memory.policy = \"auto\" asks the planner to choose; expected one of the two")
        }
        if !m.layerPolicy.isEmpty, config.model.nLayer >= 1 {
            do { _ = try LayerPolicy.parseList(m.layerPolicy, layers: config.model.nLayer, key: "memory.layer_policy") } catch {
                fail(["memory.layer_policy"], "\(error)")
            }
        }
    }

    /// Relations between keys; each is checked only when the keys involved are individually valid.
    mutating func checkShapes() {
        let m = config.model, t = config.training, p = config.parallelism, d = config.data
        if m.nHead >= 1, m.dModel >= 1 { divisible("model.d_model", m.dModel, by: [("model.n_head", m.nHead)]) }
        if t.seqLen > m.blockSize, m.blockSize >= 1 {
            fail(["training.seq_len", "model.block_size"],
                 "training.seq_len = \(t.seqLen) exceeds model.block_size = \(m.blockSize)"
                 + "; expected seq_len <= block_size (block_size is the number of learned positions)")
        }
        if d.maxTokensPerRank > 0 { checkVariableLength() }
        if t.batchSize >= 1, t.microbatches >= 1, p.dp >= 1, d.maxTokensPerRank == 0 {
            let divisors = p.dp > 1 ? [("parallelism.dp", p.dp), ("training.microbatches", t.microbatches)]
                                    : [("training.microbatches", t.microbatches)]
            divisible("training.batch_size", t.batchSize, by: divisors)
        }
        if m.nKVHead > 0, m.nHead >= 1 { divisible("model.n_head", m.nHead, by: [("model.n_kv_head", m.nKVHead)]) }
        if p.ulysses > 1, m.nHead >= 1 { divisible("model.n_head", m.nHead, by: [("parallelism.ulysses", p.ulysses)]) }
        // Ulysses splits the key/value heads across its group as it splits the query heads (no replication).
        if p.ulysses > 1, m.nKVHead > 0, m.nKVHead < m.nHead { divisible("model.n_kv_head", m.nKVHead, by: [("parallelism.ulysses", p.ulysses)]) }
        if p.ring > 1 || p.ulysses > 1, p.ring >= 1, p.ulysses >= 1, t.seqLen >= 1 {
            if p.ring > 1 {
                // Zigzag: 2 × ring chunks, and each rank's pair of chunks split into ulysses slices.
                let need = SequenceLayout.tokenMultiple(ring: p.ring, ulysses: p.ulysses)
                if t.seqLen % need != 0 {
                    let lower = t.seqLen / need * need
                    fail(["training.seq_len", "parallelism.ring", "parallelism.ulysses"],
                         "training.seq_len = \(t.seqLen) cannot be split for ring attention: it needs 2 × parallelism.ring = "
                         + "\(2 * p.ring) equal chunks (zigzag causal balance)"
                         + (p.ulysses > 1 ? " and each rank's \(p.ring > 0 ? "1/\(p.ring)" : "") of the sequence split into parallelism.ulysses = \(p.ulysses) slices" : "")
                         + "; expected a multiple of \(need) such as \([lower, lower + need].filter { $0 > 0 }.map(String.init).joined(separator: " or "))")
                }
            } else {
                divisible("training.seq_len", t.seqLen, by: [("parallelism.ulysses", p.ulysses)])
            }
        }
        if p.pipelineSchedule == "interleaved", p.pp > 1, t.microbatches >= 1, t.microbatches % p.pp != 0 {
            fail(["training.microbatches", "parallelism.pp", "parallelism.pipeline_schedule"],
                 "training.microbatches = \(t.microbatches) is not a multiple of parallelism.pp = \(p.pp), which the interleaved "
                 + "schedule needs (\(t.microbatches) = \(p.pp) × \(t.microbatches / p.pp) + \(t.microbatches % p.pp)); expected "
                 + "\(max(p.pp, t.microbatches / p.pp * p.pp)) or \((t.microbatches / p.pp + 1) * p.pp)")
        }
        let (stages, overflow) = p.pp.multipliedReportingOverflow(by: p.virtualStages)
        if p.pp >= 1, p.virtualStages >= 1, m.nLayer >= 1, overflow || m.nLayer < stages {
            fail(["model.n_layer", "parallelism.pp", "parallelism.virtual_stages"],
                 "model.n_layer = \(m.nLayer) is less than parallelism.pp × parallelism.virtual_stages = "
                 + "\(p.pp) × \(p.virtualStages) = \(overflow ? "(too large)" : String(stages)); expected at least one layer per pipeline stage")
        }
        if !p.stageLayers.trimmingCharacters(in: .whitespaces).isEmpty, !overflow {
            let want = "\(stages) comma-separated layer counts (parallelism.pp × parallelism.virtual_stages), each at least 1, "
                + "summing to model.n_layer = \(m.nLayer)"
            if let counts = p.explicitStageLayers {
                if counts.count != stages || counts.contains(where: { $0 < 1 }) || counts.reduce(0, +) != m.nLayer {
                    fail(["parallelism.stage_layers"], "parallelism.stage_layers = \(String(reflecting: p.stageLayers)) gives "
                         + "\(counts.count) stage(s) with \(counts.reduce(0, +)) layers; expected \(want)")
                }
            } else {
                fail(["parallelism.stage_layers"], "parallelism.stage_layers = \(String(reflecting: p.stageLayers)) is not a list of "
                     + "integers; expected \(want), e.g. \(String(reflecting: Array(repeating: "1", count: max(stages, 1)).joined(separator: ",")))")
            }
        }
    }

    mutating func checkDataFiles() {
        for (key, path) in [("data.train", config.data.train), ("data.val", config.data.val)] where !path.isEmpty {
            guard let problem = ConfigDataPaths.problem(path) else { continue }
            var message = "\(key) = '\(path)' in \(source([key])): \(problem)"
            if !path.hasPrefix("/") {
                message += " (relative paths resolve against the working directory "
                    + "\(FileManager.default.currentDirectoryPath))"
            }
            errors.append(message)
        }
    }

    /// model.init_from, when set, is a GPT-2 directory whose config.json describes this model.
    mutating func checkInitFrom() {
        let dir = config.model.initFrom
        guard !dir.isEmpty else { return }
        do {
            let problems = try HFImport.mismatches(dir: dir, model: config.model)
            if !problems.isEmpty { fail(["model.init_from"], "model.init_from = '\(dir)' does not fit: " + problems.joined(separator: "; ")) }
        } catch {
            fail(["model.init_from"], "\(error)")
        }
    }

    /// data.tokenizer, when set, loads and has no id at or above model.vocab_size.
    mutating func checkTokenizer() {
        let path = config.data.tokenizer
        guard !path.isEmpty else { return }
        do {
            let vocab = try Tokenizer(path: path).vocabSize
            if vocab > config.model.vocabSize {
                fail(["data.tokenizer", "model.vocab_size"],
                     "data.tokenizer = '\(path)' has a vocabulary of \(vocab) ids, more than model.vocab_size = "
                     + "\(config.model.vocabSize) (expected model.vocab_size >= \(vocab))")
            }
        } catch {
            fail(["data.tokenizer"], "data.tokenizer = '\(path)': \(error)")
        }
    }

    // MARK: Helpers

    /// The distinct sources of the explicitly set keys among `keys`, or the fallback source.
    func source(_ keys: [String]) -> String {
        var sources: [String] = []
        for key in keys {
            if let s = origins[key], !sources.contains(s) { sources.append(s) }
        }
        return sources.isEmpty ? fallbackSource : sources.joined(separator: ", ")
    }

    mutating func fail(_ keys: [String], _ message: String) {
        errors.append("\(source(keys)): \(message)")
    }

    mutating func integer(_ key: String, _ value: Int, atLeast minimum: Int) {
        if value < minimum { fail([key], "key '\(key)' expects an integer >= \(minimum), found \(value)") }
    }

    mutating func integer(_ key: String, _ value: Int, in range: ClosedRange<Int>, why: String = "") {
        if !range.contains(value) {
            fail([key], "key '\(key)' expects an integer in \(range.lowerBound)...\(range.upperBound)\(why), found \(value)")
        }
    }

    /// `ok` is the condition written so that NaN fails it.
    mutating func number(_ key: String, _ value: Double, _ ok: Bool, expected: String) {
        if !ok { fail([key], "key '\(key)' expects a number \(expected), found \(value)") }
    }

    mutating func oneOf(_ key: String, _ value: String, _ allowed: [String]) {
        guard !allowed.contains(value) else { return }
        let list = allowed.map { String(reflecting: $0) }.joined(separator: ", ")
        let hint = ConfigSchema.closest(to: value, among: allowed).map { "; did you mean \(String(reflecting: $0))?" } ?? ""
        fail([key], "key '\(key)' expects one of \(list), found \(String(reflecting: value))\(hint)")
    }

    /// Requires `value` to be a multiple of the product of `divisors`, showing the arithmetic when it is not.
    mutating func divisible(_ key: String, _ value: Int, by divisors: [(key: String, value: Int)]) {
        let (product, overflow) = divisors.reduce((1, false)) { acc, d in
            let (p, o) = acc.0.multipliedReportingOverflow(by: d.value)
            return (p, acc.1 || o)
        }
        guard !overflow, product >= 1, value % product != 0 else { return }
        let names = divisors.map(\.key).joined(separator: " × ")
        let factors = divisors.count > 1 ? divisors.map { String($0.value) }.joined(separator: " × ") + " = " : ""
        let lower = value / product * product
        let (upper, tooLarge) = lower.addingReportingOverflow(product)
        let examples = [lower > 0 ? "\(lower)" : nil, tooLarge ? nil : "\(upper)"].compactMap { $0 }
        fail([key] + divisors.map(\.key),
             "\(key) = \(value) is not divisible by \(names) = \(factors)\(product) "
             + "(\(value) = \(product) × \(value / product) + \(value % product)); "
             + "expected a multiple of \(product) such as \(examples.joined(separator: " or "))")
    }
}
