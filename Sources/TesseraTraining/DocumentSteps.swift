// Steps over variable-length documents (`data.max_tokens_per_rank`): each step every rank draws the same global
// batch (DocumentBatches), plans it the same way (DocumentScheduler, the rule in `data.schedule`), and runs the
// items it belongs to in plan order, forward and backward, with one activation set of max_tokens_per_rank tokens
// (batch 1, resized to each item). The model's attention is a DocumentAttention: a row on one rank runs the
// model's own attention, a sequence over a group of g ranks ring attention (or Ulysses) over that block's
// communicator (DocumentGroups), its split of the padded row changed per item. Gradients accumulate over the
// items and are reduced once over all replicas; every token's loss is weighted by 1 / (targets of the whole
// step's plan), once.

import TesseraComm
import TesseraDataParallel
import TesseraKernels
import TesseraModel
import TesseraSequenceParallel
import TesseraTimeline

/// What a step's plan did, for the metrics (the same on every rank: every rank computes the plan).
public struct DocumentStepStats: Sendable, Equatable {
    public var sequences = 0, tokens = 0, items = 0, ringItems = 0, longest = 0
    /// Tokens of the step's sequences whole (more than `tokens` when a static plan truncates them).
    public var sequenceTokens = 0
    /// Group sizes of the step's rings (sorted, each once), and ranks the plan gives nothing.
    public var ringSizes: [Int] = []
    public var idleRanks = 0
    /// max / mean over ranks of attention pairs and of tokens (padding included), and of the cost the plan balances.
    public var attentionImbalance = 1.0, tokenImbalance = 1.0, workImbalance = 1.0
    public var paddingFraction = 0.0
    /// The plan's weight of an attention pair in tokens (cost.pair / cost.token): fixed with data.cost_weights =
    /// "flops", the latest fit with "measured".
    public var pairPerToken = 0.0
    /// Model FLOPs of the step's trained tokens: the convention of fixed windows (every token's attention counted
    /// over its whole sequence, as PaLM and nanoGPT count it), at each sequence's own length.
    public var flops = 0.0
    public init() {}
}

final class DocumentSteps {
    let train: DocumentBatches, val: DocumentBatches?
    let schedule: String, budget: Int, capacity: Int
    /// The data-aware rule's weights: the model's FLOPs, or (data.cost_weights = "measured") refitted before each
    /// step to the times of the items every replica ran since the run's first step (`refit`).
    private(set) var cost: DocumentCost
    let measured: Bool
    private var fit = DocumentCostFit()
    /// The first step this process ran (its times include the warm-up: not sampled).
    private var firstStep: Int?
    let model: Transformer, acts: Activations
    /// The model's attention for the whole run (made by `attention(config:mesh:model:)`), switched per item.
    let attention: DocumentAttention
    let groups: DocumentGroups?
    /// The replicas (every rank here), for the plan check.
    let replicas: Communicator?
    var ranks: Int { groups?.ranks ?? 1 }
    var rank: Int { groups?.rank ?? 0 }
    /// One whole row (up to ranks × capacity positions): ids, targets, positions, starts.
    private var row: [Int32]
    private(set) var last = DocumentStepStats()

    /// `attention`: the model's attention already (made by `attention(config:mesh:model:)` before the activations,
    /// so that they hold what any of its ops saves).
    init(config: TesseraConfig, mesh: ProcessMesh?, model: Transformer, attention: DocumentAttention, acts: Activations,
         train: DocumentBatches, val: DocumentBatches?) {
        self.train = train; self.val = val; self.model = model; self.acts = acts; self.attention = attention
        schedule = config.data.schedule; capacity = config.data.maxTokensPerRank
        budget = config.training.batchSize * config.training.seqLen
        cost = DocumentCost(model: model.config)
        measured = config.data.costWeights == "measured"
        groups = attention.blocks
        replicas = mesh?.replicas
        row = [Int32](repeating: 0, count: 4 * (groups?.ranks ?? 1) * (capacity + 1))
    }

    /// The model's attention under variable-length documents: its own for rows, a ring (or Ulysses, by
    /// data.group_attention) per group size over block communicators made here (collective over the replicas).
    static func attention(config: TesseraConfig, mesh: ProcessMesh?, model: Transformer) throws -> DocumentAttention {
        let m = model.config
        return DocumentAttention(local: model.attention, blocks: try mesh?.documentGroups(), sizes: groupSizes(config),
                                 heads: m.nHead, kvHeads: m.nKVHead,
                                 headDim: m.headDim, capacity: config.data.maxTokensPerRank,
                                 ulysses: config.data.groupAttention == "ulysses", precision: model.precision,
                                 onError: { MPIRuntime.abort("\($0) at step \(Watchdog.shared?.step ?? 0); aborting the job") })
    }

    /// The group sizes (> 1) the schedule of `config` may give an item on parallelism.dp ranks: the data-aware rule
    /// any from 2 to the ranks, the static ring all of them, ring_dp the size seq_len needs, data parallelism none.
    static func groupSizes(_ config: TesseraConfig) -> [Int] {
        let ranks = config.parallelism.dp, capacity = config.data.maxTokensPerRank
        guard ranks > 1, DocumentScheduler.isPowerOfTwo(ranks) else { return [] }
        switch config.data.schedule {
        case "ring": return [ranks]
        case "ring_dp":
            let g = DocumentScheduler.smallestGroup(config.training.seqLen, ranks: ranks, capacity: capacity) ?? ranks
            return g > 1 ? [g] : []
        case "dp", "dp_padded": return []
        default: return DocumentScheduler.groupSizes(ranks: ranks).filter { $0 > 1 }
        }
    }

    func plan(_ lengths: [Int]) -> DocumentPlan {
        switch schedule {
        case "ring": DocumentScheduler.ring(lengths: lengths, ranks: ranks, capacity: capacity)
        case "ring_dp":
            DocumentScheduler.ring(lengths: lengths, ranks: ranks, capacity: capacity,
                                   size: DocumentScheduler.smallestGroup(train.maxLength, ranks: ranks, capacity: capacity) ?? ranks)
        case "dp": DocumentScheduler.dataParallel(lengths: lengths, ranks: ranks, capacity: capacity, packed: true)
        case "dp_padded": DocumentScheduler.dataParallel(lengths: lengths, ranks: ranks, capacity: capacity, packed: false)
        default: DocumentScheduler.dataAware(lengths: lengths, ranks: ranks, capacity: capacity, cost: cost)
        }
    }

    /// Step `step`'s sequences and plan.
    func step(_ step: Int) -> (sequences: [Int], plan: DocumentPlan) {
        let seqs = train.sequences(step: step, budget: budget)
        return (seqs, plan(train.lengths(seqs)))
    }

    /// Forward and backward of this rank's items of step `step`'s plan; gradients accumulate into the model's,
    /// and `reduction` starts the replicas' reduction before the last backward. Returns this rank's loss sum.
    func run(step: Int, plan: DocumentPlan, sequences: [Int], gradScale: Float, timeline: Timeline,
             reduction: () -> Void) -> Double {
        last = stats(plan, sequences: sequences, source: train)
        let mine = plan.items(for: rank)
        if mine.isEmpty { reduction() }
        var loss = 0.0
        if firstStep == nil { firstStep = step }
        let sample = measured && step != firstStep
        for (k, item) in mine.enumerated() {
            timeline.work("data item \(k)") { load(item, sequences: sequences, from: train) }
            let t0 = nowNs()
            loss += timeline.work("forward item \(k)") { model.forwardLoss(acts, gradScale: gradScale) }
            if k == mine.count - 1 { reduction() }
            timeline.work("backward item \(k)") { model.backward(acts) }
            if sample { fit.add(pairs: item.pairsPerRank, tokens: Double(item.localTokens), seconds: Double(nowNs() - t0) / 1e9) }
        }
        attention.use(size: 1, length: 0)  // anything else the model runs (a sample) is this rank's alone
        return loss
    }

    /// data.cost_weights = "measured": before step `step`, the weights fitted to every replica's samples so far
    /// (summed over the replicas, solved on rank 0 and broadcast, so that every rank plans alike); kept while the
    /// samples cannot tell pairs from tokens. Collective over the replicas; nothing to do otherwise.
    func refit(step: Int) throws {
        guard measured, let comm = replicas, comm.size > 1, let first = firstStep, step > first + 1 else { return }
        var sums = fit.sums, weights = [cost.pair, cost.token]
        try sums.withUnsafeMutableBufferPointer { try comm.allreduce($0.baseAddress!, count: 5, op: .sum, label: "document cost fit") }
        if comm.rank == 0, let c = DocumentCostFit(sums: sums).cost { weights = [c.pair, c.token] }
        try weights.withUnsafeMutableBufferPointer { try comm.broadcast($0.baseAddress!, count: 2, root: 0, label: "document cost") }
        cost = DocumentCost(pair: weights[0], token: weights[1])
    }

    /// Evaluation batch `batch`: this rank's loss sum, and the targets of the whole batch.
    func evaluate(batch: Int) -> (loss: Double, targets: Int) {
        guard let val else { return (0, 0) }
        let seqs = val.evalSequences(batch: batch, budget: budget)
        let plan = plan(val.lengths(seqs))
        var loss = 0.0
        for item in plan.items(for: rank) {
            load(item, sequences: seqs, from: val)
            loss += model.lossSum(acts)
        }
        attention.use(size: 1, length: 0)
        return (loss, DocumentBatches.targets(plan))
    }

    /// The item's tokens of this rank into the activations, and the attention that runs it.
    func load(_ item: DocumentPlan.Item, sequences: [Int], from batches: DocumentBatches) {
        let L = item.length, g = item.size
        precondition(L <= row.count / 4 && item.localTokens <= capacity, "document item of \(L) tokens over \(g) exceeds the buffers")
        row.withUnsafeMutableBufferPointer { b in
            let ids = b.baseAddress!, tg = ids + L, pos = tg + L, st = pos + L
            batches.write(item, sequences: sequences, ids: ids, targets: tg, positions: pos, starts: st)
            acts.resize(tokens: item.localTokens)
            if let layout = attention.use(size: g, length: L) {
                for j in 0..<layout.local {  // the rank's positions (SequenceLayout.positions, without an array)
                    let p = layout.ringLocalPosition(layout.ulyssesRank * layout.local + j, ringRank: layout.ringRank)
                    acts.tokenIds[j] = ids[p]; acts.targets[j] = tg[p]; acts.positions[j] = pos[p]
                }
            } else {
                acts.tokenIds.update(from: ids, count: L); acts.targets.update(from: tg, count: L)
                acts.positions.update(from: pos, count: L)
            }
            acts.documents = DocumentStarts(starts: Array(UnsafeBufferPointer(start: st, count: L)), length: L)
        }
    }

    func stats(_ plan: DocumentPlan, sequences: [Int], source: DocumentBatches) -> DocumentStepStats {
        var s = DocumentStepStats()
        s.sequences = sequences.count; s.tokens = plan.tokens; s.items = plan.items.count
        s.sequenceTokens = source.lengths(sequences).reduce(0, +)
        s.ringItems = plan.items.filter { $0.size > 1 }.count
        s.ringSizes = Set(plan.items.map(\.size).filter { $0 > 1 }).sorted()
        s.idleRanks = (0..<plan.ranks).filter { plan.items(for: $0).isEmpty }.count
        s.longest = plan.items.flatMap(\.counts).max() ?? 0
        s.attentionImbalance = DocumentPlan.imbalance(plan.pairsPerRank)
        s.tokenImbalance = DocumentPlan.imbalance(plan.tokensPerRank.map(Double.init))
        s.workImbalance = plan.workImbalance(cost)
        s.paddingFraction = plan.paddingFraction
        s.pairPerToken = cost.pair / cost.token
        s.flops = plan.items.flatMap(\.counts).reduce(0.0) { $0 + model.config.flopsPerToken(seqLen: $1) * Double($1) }
        return s
    }

    /// Every rank must have computed the same plan (each runs its part of it; a rank that planned otherwise would
    /// wait for rings no other rank joins). Checked on a run's first step: a digest of the plan, its minimum and
    /// maximum over the replicas.
    func checkAgreement(_ plan: DocumentPlan, step: Int) throws {
        guard let groups, groups.ranks > 1, let comm = replicas else { return }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for it in plan.items {
            for x in [it.size, it.block, it.length] + it.sequences + it.counts { h = splitmix64(h ^ UInt64(truncatingIfNeeded: x)) }
        }
        let digest = Int64(bitPattern: h >> 1)
        let lo = try comm.allreduce(digest, op: .min, label: "document plan"), hi = try comm.allreduce(digest, op: .max, label: "document plan")
        guard lo == hi else {
            throw TrainingError("step \(step + 1): the ranks computed different document plans (rank \(groups.rank): digest \(digest), "
                                + "others from \(lo) to \(hi)); every rank must run the same tessera build and data")
        }
    }

    /// Bytes this rank sent over its document groups so far.
    var bytesSent: Int { attention.bytesSent }
}
