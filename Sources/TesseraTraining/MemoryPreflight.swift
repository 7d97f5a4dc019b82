// Memory before any work: each rank's predicted memory, computed from the config alone (parameters,
// gradients, optimizer state under its ZeRO setting, the activation peak the banner predicts, workspaces),
// against the memory it can have (the cgroup limit or MemAvailable, whichever is smaller, divided among the
// ranks of its host). A job that cannot fit is refused before the first allocation, with the sizes and what
// would fit. Every rank reaches the same decision: the machine's numbers are agreed (the smallest memory and
// the most ranks per host over the job) and every rank then judges every pipeline stage from the config.

import Foundation
import TesseraComm
import TesseraKernels
import TesseraMemory
import TesseraModel
import TesseraPipeline
import TesseraSequenceParallel

/// The bytes one rank will allocate, by part.
public struct MemoryPrediction: Sendable, Equatable {
    public var parameters = 0
    /// bf16: the copies of the weights the products read (Transformer.productWeightBytes).
    public var productWeights = 0
    public var gradients = 0
    /// AdamW's two moments (of this rank's partition under ZeRO-1), and ZeRO-1's reduced gradient shard.
    public var optimizer = 0
    /// The activation peak of this rank's plan (what the start-up banner predicts).
    public var activations = 0
    /// The backward's transient buffers.
    public var workspace = 0
    /// Lazy checkpoints: the staging copy of what this rank writes.
    public var checkpointStaging = 0
    /// Pipeline parallelism, world rank 0: the whole model gathered for the sample at the end.
    public var wholeModel = 0
    /// Sequence parallelism: the ring's key/value blocks and accumulators, Ulysses' all-to-all buffers (one set per
    /// group size under variable-length documents); what its ops save per layer is in `activations`.
    public var sequenceBuffers = 0

    public var total: Int {
        parameters + productWeights + gradients + optimizer + activations + workspace + checkpointStaging + wholeModel + sequenceBuffers
    }

    /// "618.6 GB (parameters 154.6 GB, ...)", naming only the parts this rank has.
    public var description: String {
        let parts: [(String, Int)] = [("parameters", parameters), ("bf16 weight copy", productWeights), ("gradients", gradients), ("optimizer state", optimizer),
                                      ("activations", activations), ("workspace", workspace),
                                      ("lazy checkpoint staging", checkpointStaging), ("whole model for sampling", wholeModel),
                                      ("sequence-parallel buffers", sequenceBuffers)]
        return MemoryPreflight.size(total) + " (" + parts.filter { $0.1 > 0 }.map { "\($0.0) \(MemoryPreflight.size($0.1))" }
            .joined(separator: ", ") + ")"
    }
}

/// What the memory a rank can have is.
public struct MachineMemory: Sendable, Equatable {
    /// Bytes for the whole host (or container): the smaller of the cgroup limit and MemAvailable.
    public var bytes: Int
    /// Where `bytes` comes from, for messages ("MemAvailable in /proc/meminfo").
    public var source: String

    public init(bytes: Int, source: String) { self.bytes = bytes; self.source = source }

    /// Reads the cgroup v2 limits (this process's group and its ancestors), the cgroup v1 limit, and
    /// MemAvailable; `root` replaces `/` (tests). Nil when none of them can be read.
    public static func read(root: String = "") -> MachineMemory? {
        var found: [(Int, String)] = []
        if let available = memAvailable(root + "/proc/meminfo") { found.append((available, "MemAvailable in /proc/meminfo")) }
        if let limit = cgroupV2Limit(root: root) { found.append(limit) }
        let v1 = root + "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        if let limit = number(v1) { found.append((limit, "the cgroup v1 limit \(v1)")) }
        guard let least = found.min(by: { $0.0 < $1.0 }) else { return nil }
        return MachineMemory(bytes: least.0, source: least.1)
    }

    static func memAvailable(_ path: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return kib * 1024
        }
        return nil
    }

    /// The smallest `memory.max` on the path of this process's cgroup ("0::/a/b" in /proc/self/cgroup),
    /// from its own group up to the root.
    static func cgroupV2Limit(root: String) -> (Int, String)? {
        let base = root + "/sys/fs/cgroup"
        var group = ""
        if let text = try? String(contentsOfFile: root + "/proc/self/cgroup", encoding: .utf8),
           let line = text.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) {
            group = String(line.dropFirst(3))
        }
        var parts = group.split(separator: "/").map(String.init)
        var least: (Int, String)?
        while true {
            let path = base + (parts.isEmpty ? "" : "/" + parts.joined(separator: "/")) + "/memory.max"
            if let limit = number(path), limit < (least?.0 ?? Int.max) { least = (limit, "the cgroup limit \(path)") }
            if parts.isEmpty { break }
            parts.removeLast()
        }
        return least
    }

    /// A whole number in a file; nil for "max", unreadable files and the "unlimited" values of cgroup v1.
    static func number(_ path: String) -> Int? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let value = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), value > 0, value < 1 << 60 else { return nil }
        return value
    }
}

public enum MemoryPreflight {
    /// The decision for one rank (or, from `jobVerdict`, for the rank of the job that needs the most).
    public struct Verdict: Sendable {
        public var fits: Bool
        public var coordinate: MeshCoordinate
        public var need: MemoryPrediction
        /// The bytes this rank can have: available / ranksPerHost.
        public var share: Int
        /// Refused: the sizes, what the memory is, and what would fit; fits: one line for the banner.
        public var message: String
    }

    /// Checks the job before anything is allocated and throws a TrainingError when it cannot fit. Collective
    /// over the world (every rank calls it; all reach the same decision). Nothing to do when
    /// `memory.preflight = false`, or when the world size does not match the mesh (reported right after).
    public static func check(config: TesseraConfig, runtime: MPIRuntime?) throws {
        guard config.memory.preflight else { return }
        let p = config.parallelism
        let size = p.pp * p.dp * p.ring * p.ulysses
        guard (runtime?.size ?? 1) == size else { return }
        let machine = MachineMemory.read()
        // Unreadable memory counts as unlimited: it must not refuse, and every rank must still take part.
        var available = Int64(machine?.bytes ?? Int(Int64.max / 2)), perHost: Int32 = 1
        if let runtime, runtime.size > 1 {
            perHost = Int32(try runtime.ranksOnThisHost())
            let world = runtime.worldCommunicator
            available = try world.allreduce(available, op: .min, label: "memory preflight: available memory")
            perHost = try world.allreduce(perHost, op: .max, label: "memory preflight: ranks per host")
        }
        guard machine != nil || runtime.map({ $0.size > 1 }) == true else { return }
        let verdict = jobVerdict(config: config, availableBytes: Int(available), ranksPerHost: Int(perHost),
                                 source: machine?.source ?? "the smallest over the job's hosts")
        if !verdict.fits { throw TrainingError(verdict.message) }
    }

    /// The verdict of the rank that needs the most (the same on every rank: config and agreed numbers only).
    public static func jobVerdict(config: TesseraConfig, availableBytes: Int, ranksPerHost: Int,
                                  source: String = "available memory") -> Verdict {
        let needs = stageNeeds(config) ?? []
        let worst = needs.indices.max { needs[$0].total < needs[$1].total } ?? 0
        return verdict(config: config, coordinate: MeshCoordinate(pp: worst, dp: 0, ring: 0, ulysses: 0),
                       availableBytes: availableBytes, ranksPerHost: ranksPerHost, source: source)
    }

    /// The pure decision for the rank at `coordinate`: its prediction against availableBytes / ranksPerHost.
    public static func verdict(config: TesseraConfig, coordinate: MeshCoordinate, availableBytes: Int, ranksPerHost: Int,
                               source: String = "available memory") -> Verdict {
        let need = predict(config: config, coordinate: coordinate)
        let share = availableBytes / max(ranksPerHost, 1)
        let memory = "\(size(share)) (\(source): \(size(availableBytes)) on its host, divided among \(ranksPerHost) "
            + "rank\(ranksPerHost == 1 ? "" : "s") of the job on that host)"
        guard need.total > share else {
            return Verdict(fits: true, coordinate: coordinate, need: need, share: share,
                           message: "memory preflight: predicted \(size(need.total)) on the rank that needs the most, of \(memory)")
        }
        // Named by its coordinate: which world rank holds it is the placement's choice, made after this check.
        var message = "memory preflight: the job does not fit in memory: the rank at \(coordinate) needs \(need.description), "
            + "but can have \(memory)."
        let fixes = suggestions(config, share: share)
        message += fixes.isEmpty
            ? " Nothing tried fits (ZeRO-1, more pipeline stages, memory.policy selective/full/offload): this model needs "
                + "more memory per rank than this machine gives."
            : " What would fit: " + fixes.joined(separator: "; ") + "."
        message += " (memory.preflight = false skips this check.)"
        return Verdict(fits: false, coordinate: coordinate, need: need, share: share, message: message)
    }

    /// Changes to the config whose every rank's prediction fits `share` bytes.
    static func suggestions(_ config: TesseraConfig, share: Int) -> [String] {
        func fits(_ c: TesseraConfig) -> Int? {
            guard let most = stageNeeds(c)?.map(\.total).max() else { return nil }
            return most <= share ? most : nil
        }
        var out: [String] = []
        let p = config.parallelism, replicas = p.dp * p.ring * p.ulysses
        if p.zero == 0 {
            if replicas > 1 {
                var c = config
                c.parallelism.zero = 1
                if let need = fits(c) { out.append("parallelism.zero = 1 (ZeRO-1 shards the optimizer state over the \(replicas) replicas; needs \(size(need)) per rank)") }
            } else {
                for dp in [2, 4, 8, 16, 32, 64] {
                    var c = config
                    c.parallelism.zero = 1; c.parallelism.dp = dp; c.training.batchSize = config.training.batchSize * dp
                    if let need = fits(c) {
                        out.append("parallelism.zero = 1 with parallelism.dp = \(dp) and training.batch_size = \(c.training.batchSize) "
                                   + "(ZeRO-1 over \(dp) replicas, each rank on a memory share like this one; needs \(size(need)) per rank)")
                        break
                    }
                }
            }
        }
        let policies = config.memory.layerPolicy.isEmpty ? [config.memory.policy] : []
        for policy in ["selective", "full", "offload"] where !policies.contains(policy) {
            var c = config
            c.memory.policy = policy; c.memory.layerPolicy = ""
            if let need = fits(c) { out.append("memory.policy = \"\(policy)\" (needs \(size(need)) per rank)") }
        }
        if let (pp, need) = smallestPipeline(config, fits: fits) {
            out.append("parallelism.pp = \(pp) (\(pp) pipeline stages, each rank on a memory share like this one; the "
                       + "largest stage needs \(size(need)))")
        }
        if out.isEmpty {
            // Everything at once: ZeRO-1 (over at least 2 replicas), recomputation, and pipeline stages.
            var c = config
            c.parallelism.zero = 1; c.memory.policy = "full"; c.memory.layerPolicy = ""
            if replicas == 1 { c.parallelism.dp = 2; c.training.batchSize = config.training.batchSize * 2 }
            if let (pp, need) = smallestPipeline(c, fits: fits) {
                out.append("parallelism.pp = \(pp) with parallelism.zero = 1, parallelism.dp = \(c.parallelism.dp)"
                           + (replicas == 1 ? " (training.batch_size = \(c.training.batchSize))" : "")
                           + " and memory.policy = \"full\" (\(pp * c.parallelism.dp * p.ring * p.ulysses) ranks, each on a memory "
                           + "share like this one; the largest needs \(size(need)))")
            }
        }
        return out
    }

    /// The fewest pipeline stages (more than now) with which `config` fits, and the largest stage's need.
    static func smallestPipeline(_ config: TesseraConfig, fits: (TesseraConfig) -> Int?) -> (Int, Int)? {
        for pp in stride(from: config.parallelism.pp + 1, through: min(config.model.nLayer, 256), by: 1) {
            var c = config
            c.parallelism.pp = pp; c.parallelism.stageLayers = ""
            if c.parallelism.pipelineSchedule == "interleaved" {
                c.parallelism.pipelineSchedule = "1f1b"; c.parallelism.virtualStages = 1
            }
            if let need = fits(c) { return (pp, need) }
        }
        return nil
    }

    /// The prediction of the first rank of every pipeline stage (the other ranks of a stage need at most as
    /// much); nil when the config has no pipeline plan (a suggestion the planner rejects).
    public static func stageNeeds(_ config: TesseraConfig) -> [MemoryPrediction]? {
        var layout: PipelineLayout?
        if config.parallelism.pp > 1 {
            guard let made = try? PipelineLayout(config: config) else { return nil }
            layout = made
        }
        return (0..<max(config.parallelism.pp, 1)).map {
            predict(config: config, coordinate: MeshCoordinate(pp: $0, dp: 0, ring: 0, ulysses: 0), layout: layout)
        }
    }

    /// What the rank at `coordinate` will allocate, from the config alone (the sizes `Trainer.init` allocates).
    public static func predict(config: TesseraConfig, coordinate c: MeshCoordinate) -> MemoryPrediction {
        predict(config: config, coordinate: c, layout: config.parallelism.pp > 1 ? try? PipelineLayout(config: config) : nil)
    }

    static func predict(config: TesseraConfig, coordinate c: MeshCoordinate, layout: PipelineLayout?) -> MemoryPrediction {
        let m = config.model, t = config.training, p = config.parallelism
        let gpt = m.transformer
        let stage = layout?.stage(rank: c.pp) ?? .whole(gpt)
        // ParameterSet's storage: every tensor padded to 16 floats.
        let floats = ModelParameters.specs(gpt, stage: stage).reduce(0) { $0 + ($1.count + 15) / 16 * 16 }
        var out = MemoryPrediction()
        out.parameters = 4 * floats
        // bf16: the rounded float copy, and on oneDNN its 16-bit twin (ProductBackend.Twin), per parameter.
        let copyBytes = config.precision == .bf16 ? (ProductBackend.bf16 == .onednn ? 6 : 4) : 0
        out.productWeights = copyBytes * floats
        out.gradients = 4 * floats
        let replicas = p.dp * p.ring * p.ulysses, zero = p.zero == 1
        // ZeRO-1: equal partitions aligned to 16 floats (DataParallel); the first is the largest.
        let owned = zero ? min(((floats + replicas - 1) / replicas + 15) / 16 * 16, floats) : floats
        out.optimizer = 2 * 4 * owned + (zero ? 4 * owned : 0)
        let writes = zero || c.isFirstReplica
        if config.checkpoint.every > 0, config.checkpoint.mode == "lazy", writes { out.checkpointStaging = 3 * 4 * owned }
        if layout != nil, c.isFirstStage, c.isFirstReplica, config.sample.tokens > 0 {
            // Its parameters and the copies the sampler's products read.
            out.wholeModel = (4 + copyBytes) * ModelParameters.specs(gpt).reduce(0) { $0 + ($1.count + 15) / 16 * 16 }
        }
        // Activations: the planner's prediction for this rank's layers, as MemorySetup makes it.
        // Variable-length documents: one sequence of at most max_tokens_per_rank tokens at a time.
        let variable = config.data.maxTokensPerRank > 0
        // (Variable-length documents with Ulysses groups: any group's op saves what Ulysses of 2 or more saves.)
        let documentUlysses = variable && config.data.groupAttention == "ulysses" && p.dp > 1
        let batch = variable ? 1 : config.rankMicroBatch
        let tokens = variable ? config.data.maxTokensPerRank : p.ring * p.ulysses > 1
            ? SequenceLayout(seqLen: t.seqLen, ring: p.ring, ulysses: p.ulysses, ringRank: c.ring, ulyssesRank: c.ulysses).positions.count
            : t.seqLen
        var sets = [1]
        if let layout {
            let plan = layout.plan
            sets = PipelineEngine.predictedSets(actions: plan.actions[c.pp], chunks: plan.virtualStages) {
                plan.virtualStage(rank: c.pp, chunk: $0) > 0
            }
        }
        // The attention op's saved floats per layer, as the sequence-parallel op will report them.
        let costs = ActivationCosts(config: gpt, batch: batch, tokens: tokens, seqLen: t.seqLen, stage: stage, setsPerChunk: sets,
                                    ownLossGradient: layout != nil,
                                    attentionSaved: SequenceParallelAttention.savedFloats(batch: batch, tokens: tokens, heads: gpt.nHead,
                                                                                          kvHeads: gpt.nKVHead, headDim: gpt.headDim,
                                                                                          ulysses: documentUlysses ? 2 : p.ulysses),
                                    attentionReadsQKV: variable || SequenceParallelAttention.readsLocalQKV(ulysses: p.ulysses),
                                    microbatches: t.microbatches)
        let planner = costs.planner(flopRate: 1e11, tier: nil)
        let mine = stage.layers
        let mem = config.memory
        if mem.policy == "auto" {
            out.activations = (try? planner.plan(budget: mem.activationBudget))?.predictedBytes ?? planner.smallest.predictedBytes
        } else {
            let global = (try? LayerPolicy.parseList(mem.layerPolicy, layers: m.nLayer, key: "memory.layer_policy"))
                ?? Array(repeating: LayerPolicy(rawValue: mem.policy) ?? .keep, count: m.nLayer)
            out.activations = planner.bytes(mine.map { mem.layerPolicy.isEmpty ? (LayerPolicy(rawValue: mem.policy) ?? .keep) : global[$0] })
        }
        // Workspace: the backward's gradients in flight and tmp (Workspace.floats).
        out.workspace = 4 * Workspace.floats(n: batch * tokens, config: gpt)
        out.sequenceBuffers = sequenceBufferBytes(config: config, coordinate: c)
        return out
    }

    /// The buffers of the rank's sequence-parallel attention besides what it saves per layer
    /// (`SequenceParallelAttention.plannedBytes` of no layer): the op of the mesh's ring and Ulysses groups, or under
    /// variable-length documents one op per group size the schedule may use, each for max_tokens_per_rank tokens.
    public static func sequenceBufferBytes(config: TesseraConfig, coordinate c: MeshCoordinate) -> Int {
        let gpt = config.model.transformer, p = config.parallelism, t = config.training
        func planned(_ layout: SequenceLayout, batch: Int) -> Int {
            SequenceParallelAttention.plannedBytes(heads: gpt.nHead, kvHeads: gpt.nKVHead, headDim: gpt.headDim, layout: layout,
                                                   layers: 0, maxBatch: batch, precision: config.precision)
        }
        let capacity = config.data.maxTokensPerRank
        if capacity > 0 {
            let ulysses = config.data.groupAttention == "ulysses"
            return DocumentSteps.groupSizes(config).reduce(0) { sum, g in
                sum + planned(DocumentAttention.layout(length: g * (capacity + capacity % 2), size: g, rank: 0, ulysses: ulysses), batch: 1)
            }
        }
        guard p.ring * p.ulysses > 1, t.seqLen % SequenceLayout.tokenMultiple(ring: p.ring, ulysses: p.ulysses) == 0 else { return 0 }
        let layout = SequenceLayout(seqLen: t.seqLen, ring: p.ring, ulysses: p.ulysses, ringRank: c.ring, ulyssesRank: c.ulysses)
        return planned(layout, batch: config.rankMicroBatch)
    }

    /// Bytes in GB, MB or kB (powers of 10) with the exact count: "154.6 GB (154648772608 bytes)".
    static func size(_ bytes: Int) -> String {
        if bytes >= Int.max / 4 { return "unlimited" }
        let (unit, scale) = bytes >= 1_000_000_000 ? ("GB", 1e9) : bytes >= 1_000_000 ? ("MB", 1e6) : ("kB", 1e3)
        return String(format: "%.1f ", Double(bytes) / scale) + unit + " (\(bytes) bytes)"
    }
}
