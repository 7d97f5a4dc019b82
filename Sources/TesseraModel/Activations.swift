// Activation buffers of one micro-batch of `batch` sequences × `tokens` local tokens.
// Per layer l (N = batch·tokens, C = d_model):
//   residual[l]        [N, C]   block input (residual[0] = embeddings, residual[L] = last block output)
//   ln1, ln1Mean/Rstd  [N, C], [N]
//   qkv                [N, 3C]  fused q, k, v
//   atty, lse          [N, C], [batch, heads, tokens]   attention output and log-sum-exp
//   resid2             [N, C]   residual after attention
//   ln2, ln2Mean/Rstd  [N, C], [N]
//   fch, fchGelu       [N, 4C]  MLP pre- and post-activation
// plus ln_f and the token/position/target ids, and workspace for the backward.

import TesseraKernels

public final class Activations: @unchecked Sendable {
    public struct Layer {
        public let ln1, ln1Mean, ln1Rstd, qkv, atty, lse, resid2, ln2, ln2Mean, ln2Rstd, fch, fchGelu: UnsafeMutablePointer<Float>
    }

    public let batch: Int, config: GPTConfig
    /// Tokens per sequence of the current micro-batch (at most `capacity`).
    public private(set) var tokens: Int
    public let capacity: Int
    public let store = ActivationStore()
    public let residual: [UnsafeMutablePointer<Float>]
    public let layers: [Layer]
    public let lnf, lnfMean, lnfRstd: UnsafeMutablePointer<Float>
    public let tokenIds: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>,
                targets: UnsafeMutablePointer<Int32>
    // Backward workspace (one of each, reused by every layer).
    public let dres, dln, dqkv, datty, dfch, tmp: UnsafeMutablePointer<Float>
    public let scratch = Scratch()

    public var n: Int { batch * tokens }

    public init(config: GPTConfig, batch: Int, tokens: Int, training: Bool = true) {
        self.batch = batch; self.tokens = tokens; self.capacity = tokens; self.config = config
        let n = batch * tokens, c = config.dModel, s = store
        let lseCount = batch * config.nHead * tokens
        residual = (0...config.nLayer).map { _ in s.saved(n * c) }
        layers = (0..<config.nLayer).map { _ in
            Layer(ln1: s.saved(n * c), ln1Mean: s.saved(n), ln1Rstd: s.saved(n), qkv: s.saved(n * 3 * c),
                  atty: s.saved(n * c), lse: s.saved(lseCount), resid2: s.saved(n * c),
                  ln2: s.saved(n * c), ln2Mean: s.saved(n), ln2Rstd: s.saved(n),
                  fch: s.saved(n * 4 * c), fchGelu: s.saved(n * 4 * c))
        }
        lnf = s.saved(n * c); lnfMean = s.saved(n); lnfRstd = s.saved(n)
        let idBuf = UnsafeMutablePointer<Int32>.allocate(capacity: max(3 * n, 1))
        idBuf.initialize(repeating: 0, count: max(3 * n, 1))
        tokenIds = idBuf; positions = idBuf + n; targets = idBuf + 2 * n
        let w = training ? 1 : 0
        dres = s.workspace(w * n * c); dln = s.workspace(w * n * c); dqkv = s.workspace(w * n * 3 * c)
        datty = s.workspace(w * n * c); dfch = s.workspace(w * n * 4 * c)
        tmp = s.workspace(n * c)
    }

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
