// Which tokens of each sequence a rank feeds its model. Without sequence parallelism that is all of them, in
// order; with it, the positions its `SequenceLayout` gives (zigzag ring chunks, then a Ulysses slice). The
// data loader always produces whole sequences; this gathers the rank's tokens, targets and global positions
// out of them into a micro-batch's activations.

import TesseraKernels
import TesseraModel

public final class SequenceTokens {
    public let seqLen: Int, batch: Int
    /// This rank's global positions within a sequence, in local order.
    public let positions: [Int32]
    public let layout: SequenceLayout?
    /// Whole sequences of a micro-batch, filled by the loader (empty without sequence parallelism).
    private var fullIds: [Int32], fullTargets: [Int32], fullPositions: [Int32]
    /// Packed documents: each position's position in its document and document starts come from the loader.
    public let documents: Bool
    private var starts: [Int32]

    /// `layout` nil: every token, in order. Allocates the whole-sequence buffers once, for `batch` sequences.
    public init(seqLen: Int, batch: Int, layout: SequenceLayout?, documents: Bool = false) {
        self.seqLen = seqLen; self.batch = batch; self.layout = layout; self.documents = documents
        positions = (layout?.positions ?? Array(0..<seqLen)).map { Int32($0) }
        let whole = layout == nil ? 0 : batch * seqLen
        fullIds = [Int32](repeating: 0, count: whole)
        fullTargets = [Int32](repeating: 0, count: whole)
        fullPositions = [Int32](repeating: 0, count: documents ? whole : 0)
        starts = [Int32](repeating: 0, count: documents ? batch * seqLen : 0)
    }

    /// The loader's outputs for whole sequences: ids, targets, and with documents each token's position in its
    /// document and the document starts (nil without documents).
    public struct Rows {
        public let ids: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>
        public let positions: UnsafeMutablePointer<Int32>?, starts: UnsafeMutablePointer<Int32>?
    }

    /// Tokens of one sequence this rank holds.
    public var count: Int { positions.count }

    /// Fills the activations' token ids, targets and positions with this rank's tokens of a micro-batch:
    /// `fill` writes `batch` whole sequences (ids, targets).
    public func load(into acts: Activations, _ fill: (Rows) -> Void) {
        let seq = seqLen, tl = positions.count, batch = batch
        starts.withUnsafeMutableBufferPointer { st in
            let startsPtr = documents ? st.baseAddress! : nil
            guard layout != nil else {
                fill(Rows(ids: acts.tokenIds, targets: acts.targets, positions: documents ? acts.positions : nil, starts: startsPtr))
                if !documents { acts.setContiguousPositions() }
                return
            }
            positions.withUnsafeBufferPointer { local in
                fullIds.withUnsafeMutableBufferPointer { ids in
                    fullTargets.withUnsafeMutableBufferPointer { tg in
                        fullPositions.withUnsafeMutableBufferPointer { fp in
                            fill(Rows(ids: ids.baseAddress!, targets: tg.baseAddress!, positions: documents ? fp.baseAddress! : nil,
                                      starts: startsPtr))
                            for b in 0..<batch {
                                for (j, pos) in local.enumerated() {
                                    acts.tokenIds[b * tl + j] = ids[b * seq + Int(pos)]
                                    acts.targets[b * tl + j] = tg[b * seq + Int(pos)]
                                    acts.positions[b * tl + j] = documents ? fp[b * seq + Int(pos)] : pos
                                }
                            }
                        }
                    }
                }
            }
        }
        acts.documents = documents ? DocumentStarts(starts: starts, length: seqLen) : nil
    }
}
