// Column widths of a fused q|k|v row with grouped key/value heads, and how Ulysses shares the heads out.
//
// A fused row is [q: H·hd | k: KV·hd | v: KV·hd] and query head h reads key/value head h / (H/KV), the
// kernel's convention (`AttentionLayout.fused`). Ulysses rank j of U takes query heads [j·H/U, (j+1)·H/U)
// and key/value heads [j·KV/U, (j+1)·KV/U): with consecutive grouping the query heads of a share read
// exactly the key/value heads of the same share (H/U = (H/KV)·(KV/U)), so every rank attends on its own.
// That needs KV divisible by U; H then is too.

public struct HeadWidths: Sendable, Equatable {
    public let heads: Int, kvHeads: Int, headDim: Int

    /// `kvHeads` nil: one key/value head per query head (multi-head attention).
    public init(heads: Int, kvHeads: Int? = nil, headDim: Int) {
        let kv = kvHeads ?? heads
        precondition(kv >= 1 && heads % kv == 0, "attention: \(kv) key/value heads do not divide \(heads) query heads")
        self.heads = heads; self.kvHeads = kv; self.headDim = headDim
    }

    /// Columns of q (and of the output).
    public var q: Int { heads * headDim }
    /// Columns of k (and of v).
    public var kv: Int { kvHeads * headDim }
    /// A fused q|k|v row.
    public var row: Int { q + 2 * kv }
    /// A packed k|v row: the ring's key/value blocks and dK|dV accumulators.
    public var packed: Int { 2 * kv }

    /// What one of `ulysses` ranks attends to (the split is checked by `SequenceParallelAttention`).
    public func share(_ ulysses: Int) -> HeadWidths {
        HeadWidths(heads: heads / ulysses, kvHeads: kvHeads / ulysses, headDim: headDim)
    }
}
