// The mapping between TOML keys and the fields of TesseraConfig: one table drives reading,
// command-line overrides and rendering, so a key cannot be known to one and missing from another.

/// The type a config key holds.
enum ConfigKind: Sendable {
    case int, double, bool, string

    /// How the expected type is named in error messages ("expects an integer").
    var expected: String {
        switch self {
        case .int: return "an integer"
        case .double: return "a number"
        case .bool: return "a boolean (true or false)"
        case .string: return "a string"
        }
    }
}

/// A value of one config key, already of the key's type (integers stay integers only for `.int` keys).
enum ConfigValue: Equatable, Sendable {
    case int(Int), double(Double), bool(Bool), string(String)
}

/// One key of the schema: where it lives in the TOML file and how to get and set it on TesseraConfig.
/// `@unchecked Sendable`: the closures only capture immutable key paths.
struct ConfigField: @unchecked Sendable {
    let section: String
    let key: String
    let kind: ConfigKind
    let get: (TesseraConfig) -> ConfigValue
    /// Stores a value of `kind`; values of another kind are ignored (the reader never produces them).
    let set: (inout TesseraConfig, ConfigValue) -> Void

    var fullKey: String { section + "." + key }

    static func int(_ section: String, _ key: String, _ path: WritableKeyPath<TesseraConfig, Int>) -> ConfigField {
        ConfigField(section: section, key: key, kind: .int,
                    get: { .int($0[keyPath: path]) },
                    set: { config, value in if case .int(let v) = value { config[keyPath: path] = v } })
    }

    static func double(_ section: String, _ key: String, _ path: WritableKeyPath<TesseraConfig, Double>) -> ConfigField {
        ConfigField(section: section, key: key, kind: .double,
                    get: { .double($0[keyPath: path]) },
                    set: { config, value in if case .double(let v) = value { config[keyPath: path] = v } })
    }

    static func bool(_ section: String, _ key: String, _ path: WritableKeyPath<TesseraConfig, Bool>) -> ConfigField {
        ConfigField(section: section, key: key, kind: .bool,
                    get: { .bool($0[keyPath: path]) },
                    set: { config, value in if case .bool(let v) = value { config[keyPath: path] = v } })
    }

    static func string(_ section: String, _ key: String, _ path: WritableKeyPath<TesseraConfig, String>) -> ConfigField {
        ConfigField(section: section, key: key, kind: .string,
                    get: { .string($0[keyPath: path]) },
                    set: { config, value in if case .string(let v) = value { config[keyPath: path] = v } })
    }
}

/// Every section and key of the configuration, in documentation order.
enum ConfigSchema {
    static let sections = ["job", "model", "training", "optimizer", "data", "sample",
                           "parallelism", "checkpoint", "memory", "metrics"]

    static let fields: [ConfigField] = [
        .string("job", "name", \.job.name),
        .string("job", "output_dir", \.job.outputDir),

        .string("model", "family", \.model.family),
        .int("model", "vocab_size", \.model.vocabSize),
        .int("model", "n_layer", \.model.nLayer),
        .int("model", "n_head", \.model.nHead),
        .int("model", "d_model", \.model.dModel),
        .int("model", "block_size", \.model.blockSize),
        .int("model", "n_kv_head", \.model.nKVHead),
        .int("model", "intermediate_size", \.model.intermediateSize),
        .double("model", "rms_norm_eps", \.model.rmsNormEps),
        .double("model", "rope_theta", \.model.ropeTheta),
        .bool("model", "tie_word_embeddings", \.model.tieWordEmbeddings),
        .string("model", "init_from", \.model.initFrom),

        .int("training", "steps", \.training.steps),
        .int("training", "batch_size", \.training.batchSize),
        .int("training", "seq_len", \.training.seqLen),
        .int("training", "microbatches", \.training.microbatches),
        .int("training", "seed", \.training.seed),
        .int("training", "threads", \.training.threads),
        .int("training", "log_every", \.training.logEvery),
        .int("training", "eval_every", \.training.evalEvery),
        .int("training", "eval_batches", \.training.evalBatches),
        .string("training", "on_nonfinite", \.training.onNonfinite),
        .string("training", "precision", \.training.precision),
        .string("training", "layout", \.training.layout),
        .int("training", "max_skipped", \.training.maxSkipped),

        .double("optimizer", "lr", \.optimizer.lr),
        .double("optimizer", "min_lr_ratio", \.optimizer.minLrRatio),
        .int("optimizer", "warmup_steps", \.optimizer.warmupSteps),
        .string("optimizer", "decay", \.optimizer.decay),
        .double("optimizer", "beta1", \.optimizer.beta1),
        .double("optimizer", "beta2", \.optimizer.beta2),
        .double("optimizer", "eps", \.optimizer.eps),
        .double("optimizer", "weight_decay", \.optimizer.weightDecay),
        .double("optimizer", "grad_clip", \.optimizer.gradClip),

        .string("data", "format", \.data.format),
        .string("data", "train", \.data.train),
        .string("data", "val", \.data.val),
        .double("data", "val_fraction", \.data.valFraction),
        .string("data", "tokenizer", \.data.tokenizer),
        .string("data", "packing", \.data.packing),
        .int("data", "document_token", \.data.documentToken),
        .int("data", "max_tokens_per_rank", \.data.maxTokensPerRank),
        .string("data", "schedule", \.data.schedule),
        .string("data", "group_attention", \.data.groupAttention),
        .string("data", "cost_weights", \.data.costWeights),

        .int("sample", "tokens", \.sample.tokens),
        .string("sample", "prompt", \.sample.prompt),
        .double("sample", "temperature", \.sample.temperature),
        .int("sample", "top_k", \.sample.topK),

        .int("parallelism", "pp", \.parallelism.pp),
        .int("parallelism", "dp", \.parallelism.dp),
        .int("parallelism", "ring", \.parallelism.ring),
        .int("parallelism", "ulysses", \.parallelism.ulysses),
        .int("parallelism", "zero", \.parallelism.zero),
        .string("parallelism", "pipeline_schedule", \.parallelism.pipelineSchedule),
        .string("parallelism", "pipeline_precision", \.parallelism.pipelinePrecision),
        .int("parallelism", "virtual_stages", \.parallelism.virtualStages),
        .string("parallelism", "stage_layers", \.parallelism.stageLayers),
        .double("parallelism", "bucket_mb", \.parallelism.bucketMb),
        .double("parallelism", "timeout_s", \.parallelism.timeoutS),
        .string("parallelism", "placement", \.parallelism.placement),

        .string("checkpoint", "dir", \.checkpoint.dir),
        .int("checkpoint", "every", \.checkpoint.every),
        .string("checkpoint", "mode", \.checkpoint.mode),
        .int("checkpoint", "keep", \.checkpoint.keep),
        .string("checkpoint", "persist_dir", \.checkpoint.persistDir),

        .string("memory", "policy", \.memory.policy),
        .int("memory", "activation_budget", \.memory.activationBudget),
        .string("memory", "offload_dir", \.memory.offloadDir),
        .string("memory", "layer_policy", \.memory.layerPolicy),
        .bool("memory", "preflight", \.memory.preflight),

        .string("metrics", "path", \.metrics.path),
        .bool("metrics", "tensorboard", \.metrics.tensorboard),
        .string("metrics", "tensorboard_dir", \.metrics.tensorboardDir),
    ]

    static func field(_ fullKey: String) -> ConfigField? {
        fields.first { $0.fullKey == fullKey }
    }

    static func keys(in section: String) -> [String] {
        fields.filter { $0.section == section }.map(\.key)
    }

    /// The error text for a key that is not in the schema, with a "did you mean" hint when one is close.
    static func unknownKeyMessage(_ fullKey: String, source: String) -> String {
        let (section, key) = split(fullKey)
        guard let key else {
            let hint = closestKey(section, bareKey: section).map { "; did you mean '\($0)'?" } ?? ""
            return "\(source): unknown key '\(section)' at the top level (every key belongs to a section"
                + " such as [training])\(hint)"
        }
        guard sections.contains(section) else { return unknownSectionMessage(section, source: source) }
        let known = keys(in: section).joined(separator: ", ")
        let hint = closestKey(fullKey, bareKey: key).map { "; did you mean '\($0)'?" } ?? ""
        return "\(source): unknown key '\(fullKey)' (known keys in [\(section)]: \(known))\(hint)"
    }

    static func unknownSectionMessage(_ section: String, source: String) -> String {
        let hint = closest(to: section, among: sections).map { "; did you mean [\($0)]?" } ?? ""
        return "\(source): unknown section [\(section)] (known sections: \(sections.joined(separator: ", ")))\(hint)"
    }

    /// Splits "section.key" at the first dot; a name without a dot has no key.
    static func split(_ fullKey: String) -> (section: String, key: String?) {
        guard let dot = fullKey.firstIndex(of: ".") else { return (fullKey, nil) }
        return (String(fullKey[..<dot]), String(fullKey[fullKey.index(after: dot)...]))
    }

    /// The known full key closest to a misspelled one, also finding a right key put in the wrong section.
    private static func closestKey(_ fullKey: String, bareKey: String) -> String? {
        var best: (key: String, distance: Int)?
        for field in fields {
            let distance = min(editDistance(fullKey, field.fullKey), editDistance(bareKey, field.key) + 1)
            if distance < (best?.distance ?? Int.max) { best = (field.fullKey, distance) }
        }
        guard let best, best.distance <= suggestionLimit(bareKey) + 1 else { return nil }
        return best.key
    }

    /// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
    static func closest(to word: String, among candidates: [String]) -> String? {
        let scored = candidates.map { ($0, editDistance(word, $0)) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= suggestionLimit(word) else { return nil }
        return best.0
    }

    private static func suggestionLimit(_ word: String) -> Int {
        max(1, min(3, word.count / 3))
    }

    /// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent swaps cost 1.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let s = Array(a), t = Array(b)
        if s.isEmpty { return t.count }
        if t.isEmpty { return s.count }
        var d = [[Int]](repeating: [Int](repeating: 0, count: t.count + 1), count: s.count + 1)
        for i in 0...s.count { d[i][0] = i }
        for j in 0...t.count { d[0][j] = j }
        for i in 1...s.count {
            for j in 1...t.count {
                let cost = s[i - 1] == t[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, s[i - 1] == t[j - 2], s[i - 2] == t[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[s.count][t.count]
    }
}
