// The single-rank attention op: causal self-attention over the whole local sequence with the blockwise
// kernel, grouped key/value heads read in place (no copy per query head).

import TesseraKernels

public final class LocalAttention: AttentionOp {
    public let heads: Int, kvHeads: Int, headDim: Int
    public var blockQ = 64, blockK = 64
    public var documents: DocumentStarts?
    public init(heads: Int, kvHeads: Int? = nil, headDim: Int) {
        self.heads = heads; self.kvHeads = kvHeads ?? heads; self.headDim = headDim
    }

    func layout(_ batch: Int, _ tokens: Int) -> AttentionLayout {
        var g = AttentionLayout.fused(batch: batch, t: tokens, heads: heads, headDim: headDim, kvHeads: kvHeads)
        g.blockQ = blockQ; g.blockK = blockK
        g.documents = documents
        return g
    }

    /// Offsets of k and v in a fused qkv row.
    var kOffset: Int { heads * headDim }
    var vOffset: Int { (heads + kvHeads) * headDim }

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch) {
        Attention.forward(out: out, lse: lse, q: qkv, k: qkv + kOffset, v: qkv + vOffset, layout: layout(batch, tokens),
                          scratch: scratch)
    }

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                         tokens: Int, layer: Int, scratch: Scratch) {
        Attention.backward(dq: dqkv, dk: dqkv + kOffset, dv: dqkv + vOffset, dout: dout, out: out, lse: lse,
                           q: qkv, k: qkv + kOffset, v: qkv + vOffset, layout: layout(batch, tokens), scratch: scratch)
    }
}
