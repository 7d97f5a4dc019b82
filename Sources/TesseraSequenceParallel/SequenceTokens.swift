// Which tokens of each sequence a rank feeds its model. Without sequence parallelism that is all of them, in
// order; with it, the positions its `SequenceLayout` gives (zigzag ring chunks, then a Ulysses slice). The
// data loader always produces whole sequences; this gathers the rank's tokens, targets and global positions
// out of them into a micro-batch's activations.

import TesseraModel

public final class SequenceTokens {
    public let seqLen: Int, batch: Int
    /// This rank's global positions within a sequence, in local order.
    public let positions: [Int32]
    public let layout: SequenceLayout?
    /// Whole sequences of a micro-batch, filled by the loader (empty without sequence parallelism).
    private var fullIds: [Int32], fullTargets: [Int32]

    /// `layout` nil: every token, in order. Allocates the whole-sequence buffers once, for `batch` sequences.
    public init(seqLen: Int, batch: Int, layout: SequenceLayout?) {
        self.seqLen = seqLen; self.batch = batch; self.layout = layout
        positions = (layout?.positions ?? Array(0..<seqLen)).map { Int32($0) }
        let whole = layout == nil ? 0 : batch * seqLen
        fullIds = [Int32](repeating: 0, count: whole)
        fullTargets = [Int32](repeating: 0, count: whole)
    }

    /// Tokens of one sequence this rank holds.
    public var count: Int { positions.count }

    /// Fills the activations' token ids, targets and positions with this rank's tokens of a micro-batch:
    /// `fill` writes `batch` whole sequences (ids, targets).
    public func load(into acts: Activations, _ fill: (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Void) {
        guard layout != nil else {
            fill(acts.tokenIds, acts.targets)
            acts.setContiguousPositions()
            return
        }
        let seq = seqLen, tl = positions.count, batch = batch
        positions.withUnsafeBufferPointer { local in
            fullIds.withUnsafeMutableBufferPointer { ids in
                fullTargets.withUnsafeMutableBufferPointer { tg in
                    fill(ids.baseAddress!, tg.baseAddress!)
                    for b in 0..<batch {
                        for (j, pos) in local.enumerated() {
                            acts.tokenIds[b * tl + j] = ids[b * seq + Int(pos)]
                            acts.targets[b * tl + j] = tg[b * seq + Int(pos)]
                            acts.positions[b * tl + j] = pos
                        }
                    }
                }
            }
        }
    }
}
