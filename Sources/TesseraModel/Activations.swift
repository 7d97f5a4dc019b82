// Activation buffers of one micro-batch of `batch` sequences × `tokens` local tokens, through the layers
// `layerRange` (all of them without pipeline parallelism; one model chunk with it).
// Per layer l of the range (N = batch·tokens, C = d_model, Q = the fused q|k|v width, M = the MLP input
// product's width, F = the MLP's hidden width; see TransformerConfig), a block's tensors (`Layer`), named for
// GPT-2 and filled by Llama as noted:
//   ln1, ln1Mean/Rstd  [N, C], [N]   first norm's output and statistics (Llama: RMSNorm, the mean unused)
//   qkv                [N, Q]        fused q, k, v (Llama: q and k after RoPE)
//   atty, lse          [N, C], [batch, heads, tokens]   attention output and log-sum-exp
//   resid2             [N, C]        residual after attention
//   ln2, ln2Mean/Rstd  [N, C], [N]   second norm
//   fch                [N, M]        MLP pre-activation (GPT-2: c_fc, M = 4C; Llama: gate|up, M = 2F)
//   fchGelu            [N, F]        MLP activation (GPT-2: GELU; Llama: silu(gate)·up)
//   attnSaved                        what the attention op keeps (Ulysses: head-sharded q/k/v and output)
// and the residual stream: residual[i] = the input of block first+i (residual[0] = the chunk's input: the
// embeddings on the first stage, the received activation elsewhere; residual[count] = the chunk's output),
// plus ln_f (on the chunk that ends with the head) and the token/position/target ids.
//
// Where a block's tensors live depends on its `LayerPolicy` (see LayerPolicy.swift):
//   keep       saved buffers of this set
//   selective  saved: qkv (unless the attention op never reads it in backward), atty, lse, attnSaved;
//              the rest in the workspace's recompute buffer, refilled before the block's backward
//   full       all in the workspace's recompute buffer
//   offload    in a staging slot of the workspace while produced or consumed; on the tier in between
// The residual stream and ln_f are always saved. The workspace (`Workspace`) is used by one forward or
// backward at a time, so the activation sets of the micro-batches a pipeline stage keeps alive share one.

import TesseraKernels
import TesseraMemory

/// Transient buffers of a forward or backward pass (gradients in flight, outputs consumed at once), the
/// recompute buffer and the offload staging slots.
public final class Workspace: @unchecked Sendable {
    /// Gradients in flight: dres, dln, datty [N, C]; dqkv [N, Q]; dfch [N, M]; dact [N, F] (Llama only: GPT-2's
    /// GELU backward runs in place in dfch); and tmp [N, C].
    public let dres, dln, dqkv, datty, dfch, dact, tmp: UnsafeMutablePointer<Float>
    public let scratch = Scratch()
    public let store = ActivationStore()
    let n: Int
    /// One block's tensors, for recomputed blocks (made when a set first needs it).
    private(set) var recompute: Activations.Layer?
    /// Staging slots of offloaded blocks (made when a set first needs them).
    private(set) var staging: OffloadStaging?

    /// Room for `n` tokens of `config`'s widths; `training: false` leaves out the backward's buffers.
    public init(n: Int, config m: TransformerConfig, training: Bool) {
        self.n = n
        let f = Self.bufferFloats(n: n, config: m, training: training), s = store
        dres = s.workspace(f[0]); dln = s.workspace(f[1]); dqkv = s.workspace(f[2]); datty = s.workspace(f[3])
        dfch = s.workspace(f[4]); dact = s.workspace(f[5]); tmp = s.workspace(f[6])
    }

    /// Floats of dres, dln, dqkv, datty, dfch, dact, tmp, in that order (none of the gradients without training).
    static func bufferFloats(n: Int, config m: TransformerConfig, training: Bool) -> [Int] {
        let w = training ? 1 : 0, c = m.dModel
        return [w * n * c, w * n * c, w * n * m.qkvWidth, w * n * c, w * n * m.mlpInWidth,
                m.family == .llama ? w * n * m.mlpHiddenWidth : 0, n * c]
    }

    /// Floats of the buffers above (the memory preflight's prediction).
    public static func floats(n: Int, config m: TransformerConfig, training: Bool = true) -> Int {
        bufferFloats(n: n, config: m, training: training).reduce(0, +)
    }

    /// Offload writes still running read the staging slots: they finish before the slots are freed.
    deinit { staging?.tier.drain() }

    /// Backward workspace bytes (not activation memory).
    public var bytes: Int { store.workspaceBytes }
    /// Recompute buffer and staging slots.
    public var activationBytes: Int { store.activationBytes }

    func recomputeLayer(_ shape: Activations.LayerShape) -> Activations.Layer {
        if let r = recompute { return r }
        let r = shape.carve(store.allocate(shape.floats, .recompute))
        recompute = r
        return r
    }

    func stagingSlots(_ tier: OffloadTier, _ shape: Activations.LayerShape, compact: Int) -> OffloadStaging {
        if let s = staging { precondition(s.compact == compact, "one workspace, one offload precision"); return s }
        let s = OffloadStaging(tier: tier, floats: shape.floats, store: store, compact: compact)
        staging = s
        return s
    }
}

public final class Activations: @unchecked Sendable {
    public struct Layer {
        public let ln1, ln1Mean, ln1Rstd, qkv, atty, lse, resid2, ln2, ln2Mean, ln2Rstd, fch, fchGelu: UnsafeMutablePointer<Float>
        /// What the attention op keeps for its backward (`AttentionOp.savedFloats`; empty for local attention).
        public let attnSaved: UnsafeMutablePointer<Float>
    }

    /// Sizes of one block's tensors, and their layout in one contiguous buffer (recompute, offload slots).
    struct LayerShape {
        let n: Int, c: Int, qkv: Int, mlpIn: Int, hidden: Int, lse: Int, attention: Int
        init(n: Int, config m: TransformerConfig, lse: Int, attention: Int) {
            self.n = n; c = m.dModel; qkv = m.qkvWidth; mlpIn = m.mlpInWidth; hidden = m.mlpHiddenWidth
            self.lse = lse; self.attention = attention
        }
        var floats: Int { operandFloats + n * (c + mlpIn) + 4 * n + lse }
        /// The leading floats that are product operands (ln1, qkv, atty, ln2, fchGelu, the attention op's saved
        /// head-sharded q/k/v and output): bf16 values in bf16 training, so an offloaded block sends them as bf16.
        var operandFloats: Int { n * (3 * c + qkv + hidden) + attention }
        /// Floats a set keeps of one block under `policy` (as `Activations.init` allocates them; the
        /// recompute buffer and the staging slots are the workspace's).
        func keptFloats(_ policy: LayerPolicy, readsQKV: Bool) -> Int {
            switch policy {
            case .keep: floats
            case .selective: (readsQKV ? n * qkv : 0) + n * c + lse + attention  // qkv, atty, lse, attnSaved
            case .full, .offload: 0
            }
        }
        /// Floats a set keeps whatever its policies: the residual stream, and ln_f with (pipeline) its own
        /// loss gradient on the head chunk.
        func fixedFloats(layers: Int, head: Bool, ownLossGradient: Bool) -> Int {
            (layers + 1) * n * c + (head ? n * c + 2 * n + (ownLossGradient ? n * c : 0) : 0)
        }
        func carve(_ p: UnsafeMutablePointer<Float>) -> Layer {
            var o = 0
            func take(_ k: Int) -> UnsafeMutablePointer<Float> { defer { o += k }; return p + o }
            // The operands first (see operandFloats), then what stays fp32.
            let ln1 = take(n * c), qkv = take(n * self.qkv), atty = take(n * c), ln2 = take(n * c), fchGelu = take(n * hidden)
            let attnSaved = take(attention)
            return Layer(ln1: ln1, ln1Mean: take(n), ln1Rstd: take(n), qkv: qkv, atty: atty, lse: take(lse),
                         resid2: take(n * c), ln2: ln2, ln2Mean: take(n), ln2Rstd: take(n), fch: take(n * mlpIn),
                         fchGelu: fchGelu, attnSaved: attnSaved)
        }
    }

    /// Where a block's tensors are.
    enum Home {
        case resident(Layer)           // keep, selective (mixed saved + recompute buffer), full (recompute buffer)
        case offloaded(region: Int)    // a staging slot while bound
    }

    public let batch: Int, config: TransformerConfig
    /// Tokens per sequence of the current micro-batch (at most `capacity`).
    public private(set) var tokens: Int
    public let capacity: Int
    public let store = ActivationStore()
    /// The blocks these activations cover; `embeds`: the chunk starts with the embeddings; `head`: it ends
    /// with ln_f, the LM head and the loss.
    public let layerRange: Range<Int>, embeds: Bool, head: Bool
    /// Each block's policy (indexed by local layer).
    public let policies: [LayerPolicy]
    public let residual: [UnsafeMutablePointer<Float>]
    private let homes: [Home]
    private var bound: [Layer?]
    private let shape: LayerShape
    public let lnf, lnfMean, lnfRstd: UnsafeMutablePointer<Float>
    /// d(loss)/d(ln_f output), written by the loss in the forward pass and read by the backward. Its own
    /// saved buffer when other micro-batches' forwards may run in between (pipeline schedules), else the
    /// workspace's `dln`.
    public let dlnf: UnsafeMutablePointer<Float>
    public let tokenIds: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>,
                targets: UnsafeMutablePointer<Int32>
    /// Where each position's document starts, for the whole rows of this micro-batch (packed documents: attention
    /// is block-causal, positions restart per document); nil: every row is one sequence.
    public var documents: DocumentStarts?
    public let workspace: Workspace
    // Backward workspace (one of each, reused by every layer).
    public var dres: UnsafeMutablePointer<Float> { workspace.dres }
    public var dln: UnsafeMutablePointer<Float> { workspace.dln }
    public var dqkv: UnsafeMutablePointer<Float> { workspace.dqkv }
    public var datty: UnsafeMutablePointer<Float> { workspace.datty }
    public var dfch: UnsafeMutablePointer<Float> { workspace.dfch }
    public var dact: UnsafeMutablePointer<Float> { workspace.dact }
    public var tmp: UnsafeMutablePointer<Float> { workspace.tmp }
    public var scratch: Scratch { workspace.scratch }

    public var n: Int { batch * tokens }

    /// The whole model, with its own workspace; `attentionSaved`: the attention op's floats per layer.
    public convenience init(config: TransformerConfig, batch: Int, tokens: Int, training: Bool = true, attentionSaved: Int = 0,
                            memory: MemoryPlan = .init()) {
        self.init(config: config, batch: batch, tokens: tokens, layers: 0..<config.nLayer, embeds: true, head: true,
                  workspace: Workspace(n: batch * tokens, config: config, training: training), ownLossGradient: false,
                  attentionSaved: attentionSaved, memory: memory)
    }

    /// Layers `layers` of the model; `workspace` must have room for batch × tokens.
    /// `ownLossGradient`: the head's loss gradient gets its own buffer (see `dlnf`).
    /// `attentionReadsQKV`: the attention op's backward reads the local qkv (false: selective need not keep it).
    public init(config: TransformerConfig, batch: Int, tokens: Int, layers range: Range<Int>, embeds: Bool, head: Bool,
                workspace: Workspace, ownLossGradient: Bool = true, attentionSaved: Int = 0,
                attentionReadsQKV: Bool = true, memory: MemoryPlan = .init()) {
        self.batch = batch; self.tokens = tokens; self.capacity = tokens; self.config = config
        layerRange = range; self.embeds = embeds; self.head = head; self.workspace = workspace
        let n = batch * tokens, c = config.dModel, s = store
        let shape = LayerShape(n: n, config: config, lse: batch * config.nHead * tokens, attention: attentionSaved)
        self.shape = shape
        policies = range.map { memory.policy(layer: $0) }
        residual = (0...range.count).map { _ in s.saved(n * c) }
        homes = policies.map { policy in
            switch policy {
            case .keep:
                return .resident(shape.carve(s.saved(shape.floats)))
            case .full:
                return .resident(workspace.recomputeLayer(shape))
            case .selective:
                let r = workspace.recomputeLayer(shape)
                return .resident(Layer(ln1: r.ln1, ln1Mean: r.ln1Mean, ln1Rstd: r.ln1Rstd,
                                       qkv: attentionReadsQKV ? s.saved(n * config.qkvWidth) : r.qkv,
                                       atty: s.saved(n * c), lse: s.saved(shape.lse), resid2: r.resid2, ln2: r.ln2,
                                       ln2Mean: r.ln2Mean, ln2Rstd: r.ln2Rstd, fch: r.fch, fchGelu: r.fchGelu,
                                       attnSaved: s.saved(shape.attention)))
            case .offload:
                guard let tier = memory.tier else { preconditionFailure("offload policy without an offload tier") }
                let compact = memory.operandsAreBF16 ? shape.operandFloats : 0
                _ = workspace.stagingSlots(tier, shape, compact: compact)
                return .offloaded(region: tier.reserve(bytes: OffloadStaging.bytes(floats: shape.floats, compact: compact)))
            }
        }
        bound = Array(repeating: nil, count: range.count)
        let h = head ? 1 : 0
        lnf = s.saved(h * n * c); lnfMean = s.saved(h * n); lnfRstd = s.saved(h * n)
        dlnf = head && ownLossGradient ? s.saved(n * c) : workspace.dln
        let idBuf = UnsafeMutablePointer<Int32>.allocate(capacity: max(3 * n, 1))
        idBuf.initialize(repeating: 0, count: max(3 * n, 1))
        tokenIds = idBuf; positions = idBuf + n; targets = idBuf + 2 * n
    }

    public func policy(_ l: Int) -> LayerPolicy { policies[l - layerRange.lowerBound] }

    /// Tensors of block l (a global layer index inside `layerRange`); an offloaded block only between
    /// `beginForward`/`endForward` or `beginBackward`/`endBackward`.
    public func layer(_ l: Int) -> Layer {
        let i = l - layerRange.lowerBound
        switch homes[i] {
        case .resident(let s): return s
        case .offloaded: return bound[i]!
        }
    }

    /// Block l's tensors for its forward (an offloaded block gets a staging slot).
    func beginForward(_ l: Int) -> Layer {
        let i = l - layerRange.lowerBound
        guard case .offloaded(let region) = homes[i] else { return layer(l) }
        let s = shape.carve(workspace.staging!.beginFill(region: region))
        bound[i] = s
        return s
    }

    /// Block l's forward is done: an offloaded block goes to the tier (`save`: a backward will follow).
    func endForward(_ l: Int, save: Bool) {
        let i = l - layerRange.lowerBound
        guard case .offloaded(let region) = homes[i] else { return }
        workspace.staging!.endFill(region: region, save: save)
        bound[i] = nil
    }

    /// Block l's tensors for its backward (an offloaded block is read back if the prefetch has not), and the
    /// next offloaded block below starts coming back.
    func beginBackward(_ l: Int) -> Layer {
        let i = l - layerRange.lowerBound
        let s = bindForBackward(i)
        if i > 0, case .offloaded(let below) = homes[i - 1] { workspace.staging!.prefetch(region: below) }
        return s
    }

    private func bindForBackward(_ i: Int) -> Layer {
        guard case .offloaded(let region) = homes[i] else { return layer(layerRange.lowerBound + i) }
        let s = shape.carve(workspace.staging!.beginUse(region: region))
        bound[i] = s
        return s
    }

    /// Block l's backward is done: its staging slot and tier region are released.
    func endBackward(_ l: Int) {
        let i = l - layerRange.lowerBound
        guard case .offloaded(let region) = homes[i] else { return }
        workspace.staging!.endUse(region: region)
        bound[i] = nil
    }

    /// Block l's tensors if its q/k/v and attention state are in memory now, without waiting (nil for a
    /// recomputed block, whose buffer holds another block, or an offloaded block not yet read back).
    func residentAttentionInputs(_ l: Int) -> Layer? {
        let i = l - layerRange.lowerBound
        switch (homes[i], policies[i]) {
        case (.resident(let s), .keep), (.resident(let s), .selective): return s
        case (.offloaded(let region), _):
            return bound[i] ?? workspace.staging!.residentSlot(region: region).map { shape.carve($0) }
        default: return nil
        }
    }

    /// The input of layer l; `input(of: layerRange.upperBound)` is the chunk's output.
    public func input(of l: Int) -> UnsafeMutablePointer<Float> { residual[l - layerRange.lowerBound] }
    /// The chunk's output (the last block's output: ln_f's input, or what goes to the next stage).
    public var output: UnsafeMutablePointer<Float> { residual[layerRange.count] }
    /// This set's saved bytes plus the workspace's (shared when several sets use one).
    public var totalBytes: Int { store.savedBytes + workspace.store.totalBytes }
    /// Activation memory this set holds itself (not counting the shared recompute buffer and slots).
    public var savedBytes: Int { store.savedBytes }

    deinit { tokenIds.deallocate() }

    /// Uses the first `tokens` positions of each buffer (for inference on shorter sequences; batch 1 only,
    /// so that rows stay contiguous).
    public func resize(tokens t: Int) {
        precondition(t >= 1 && t <= capacity && (batch == 1 || t == capacity), "Activations.resize(\(t)) beyond capacity \(capacity)")
        tokens = t
    }

    /// Positions 0..<tokens for every sequence (the single-rank layout).
    public func setContiguousPositions(start: Int = 0) {
        for b in 0..<batch { for t in 0..<tokens { positions[b * tokens + t] = Int32(start + t) } }
    }
}

/// How a model's blocks keep their activations: a policy per global layer and, for offloaded blocks, the tier.
public struct MemoryPlan {
    public var policies: [LayerPolicy]
    public var tier: OffloadTier?
    /// bf16 training: the product operands of a block are bf16 values, and offload sends them as bf16.
    public var operandsAreBF16 = false
    public init(policies: [LayerPolicy] = [], tier: OffloadTier? = nil) { self.policies = policies; self.tier = tier }
    /// The policy of global layer l (keep when the plan does not say).
    public func policy(layer l: Int) -> LayerPolicy { l < policies.count ? policies[l] : .keep }
}
