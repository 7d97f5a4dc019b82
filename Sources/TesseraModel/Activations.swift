// Activation buffers of one micro-batch of `batch` sequences × `tokens` local tokens, through the layers
// `layerRange` (all of them without pipeline parallelism; one model chunk with it).
// Per layer l of the range, at local index i = l − first (N = batch·tokens, C = d_model):
//   residual[i]        [N, C]   block input (residual[0] = the chunk's input: the embeddings on the first
//                               stage, the received activation elsewhere; residual[count] = chunk output)
//   ln1, ln1Mean/Rstd  [N, C], [N]
//   qkv                [N, 3C]  fused q, k, v
//   atty, lse          [N, C], [batch, heads, tokens]   attention output and log-sum-exp
//   resid2             [N, C]   residual after attention
//   ln2, ln2Mean/Rstd  [N, C], [N]
//   fch, fchGelu       [N, 4C]  MLP pre- and post-activation
// plus ln_f (on the chunk that ends with the head) and the token/position/target ids. The backward's
// workspace (`Workspace`) is used by one forward or backward at a time, so the activation sets of the
// micro-batches a pipeline stage keeps alive share one.

import TesseraKernels

/// Transient buffers of a forward or backward pass (gradients in flight, outputs consumed at once).
public final class Workspace: @unchecked Sendable {
    public let dres, dln, dqkv, datty, dfch, tmp: UnsafeMutablePointer<Float>
    public let scratch = Scratch()
    public let store = ActivationStore()

    /// Room for `n` tokens of width `c`; `training: false` leaves out the backward's buffers.
    public init(n: Int, c: Int, training: Bool) {
        let w = training ? 1 : 0, s = store
        dres = s.workspace(w * n * c); dln = s.workspace(w * n * c); dqkv = s.workspace(w * n * 3 * c)
        datty = s.workspace(w * n * c); dfch = s.workspace(w * n * 4 * c)
        tmp = s.workspace(n * c)
    }
    public var bytes: Int { store.workspaceBytes }
}

public final class Activations: @unchecked Sendable {
    public struct Layer {
        public let ln1, ln1Mean, ln1Rstd, qkv, atty, lse, resid2, ln2, ln2Mean, ln2Rstd, fch, fchGelu: UnsafeMutablePointer<Float>
        /// What the attention op keeps for its backward (`AttentionOp.savedFloats`; empty for local attention).
        public let attnSaved: UnsafeMutablePointer<Float>
    }

    public let batch: Int, config: GPTConfig
    /// Tokens per sequence of the current micro-batch (at most `capacity`).
    public private(set) var tokens: Int
    public let capacity: Int
    public let store = ActivationStore()
    /// The blocks these activations cover; `embeds`: the chunk starts with the embeddings; `head`: it ends
    /// with ln_f, the LM head and the loss.
    public let layerRange: Range<Int>, embeds: Bool, head: Bool
    public let residual: [UnsafeMutablePointer<Float>]
    public let layers: [Layer]
    public let lnf, lnfMean, lnfRstd: UnsafeMutablePointer<Float>
    /// d(loss)/d(ln_f output), written by the loss in the forward pass and read by the backward. Its own
    /// saved buffer when other micro-batches' forwards may run in between (pipeline schedules), else the
    /// workspace's `dln`.
    public let dlnf: UnsafeMutablePointer<Float>
    public let tokenIds: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>,
                targets: UnsafeMutablePointer<Int32>
    public let workspace: Workspace
    // Backward workspace (one of each, reused by every layer).
    public var dres: UnsafeMutablePointer<Float> { workspace.dres }
    public var dln: UnsafeMutablePointer<Float> { workspace.dln }
    public var dqkv: UnsafeMutablePointer<Float> { workspace.dqkv }
    public var datty: UnsafeMutablePointer<Float> { workspace.datty }
    public var dfch: UnsafeMutablePointer<Float> { workspace.dfch }
    public var tmp: UnsafeMutablePointer<Float> { workspace.tmp }
    public var scratch: Scratch { workspace.scratch }

    public var n: Int { batch * tokens }

    /// The whole model, with its own workspace; `attentionSaved`: the attention op's floats per layer.
    public convenience init(config: GPTConfig, batch: Int, tokens: Int, training: Bool = true, attentionSaved: Int = 0) {
        self.init(config: config, batch: batch, tokens: tokens, layers: 0..<config.nLayer, embeds: true, head: true,
                  workspace: Workspace(n: batch * tokens, c: config.dModel, training: training), ownLossGradient: false,
                  attentionSaved: attentionSaved)
    }

    /// Layers `layers` of the model; `workspace` must have room for batch × tokens.
    /// `ownLossGradient`: the head's loss gradient gets its own buffer (see `dlnf`).
    public init(config: GPTConfig, batch: Int, tokens: Int, layers range: Range<Int>, embeds: Bool, head: Bool,
                workspace: Workspace, ownLossGradient: Bool = true, attentionSaved: Int = 0) {
        self.batch = batch; self.tokens = tokens; self.capacity = tokens; self.config = config
        layerRange = range; self.embeds = embeds; self.head = head; self.workspace = workspace
        let n = batch * tokens, c = config.dModel, s = store
        let lseCount = batch * config.nHead * tokens
        residual = (0...range.count).map { _ in s.saved(n * c) }
        layers = range.map { _ in
            Layer(ln1: s.saved(n * c), ln1Mean: s.saved(n), ln1Rstd: s.saved(n), qkv: s.saved(n * 3 * c),
                  atty: s.saved(n * c), lse: s.saved(lseCount), resid2: s.saved(n * c),
                  ln2: s.saved(n * c), ln2Mean: s.saved(n), ln2Rstd: s.saved(n),
                  fch: s.saved(n * 4 * c), fchGelu: s.saved(n * 4 * c), attnSaved: s.saved(attentionSaved))
        }
        let h = head ? 1 : 0
        lnf = s.saved(h * n * c); lnfMean = s.saved(h * n); lnfRstd = s.saved(h * n)
        dlnf = head && ownLossGradient ? s.saved(n * c) : workspace.dln
        let idBuf = UnsafeMutablePointer<Int32>.allocate(capacity: max(3 * n, 1))
        idBuf.initialize(repeating: 0, count: max(3 * n, 1))
        tokenIds = idBuf; positions = idBuf + n; targets = idBuf + 2 * n
    }

    /// Saved tensors of layer l (a global layer index inside `layerRange`).
    public func layer(_ l: Int) -> Layer { layers[l - layerRange.lowerBound] }
    /// The input of layer l; `input(of: layerRange.upperBound)` is the chunk's output.
    public func input(of l: Int) -> UnsafeMutablePointer<Float> { residual[l - layerRange.lowerBound] }
    /// The chunk's output (the last block's output: ln_f's input, or what goes to the next stage).
    public var output: UnsafeMutablePointer<Float> { residual[layerRange.count] }
    /// Bytes saved for the backward plus the workspace (shared when several sets use one).
    public var totalBytes: Int { store.savedBytes + workspace.bytes }

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
