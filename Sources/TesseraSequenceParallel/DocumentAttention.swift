// The attention of variable-length documents (`data.max_tokens_per_rank`): the model's AttentionOp for a whole
// run, switched per item of a step's plan (DocumentScheduler) to
//   the model's own attention     a row of whole sequences on one rank;
//   a ring over a block of g       one long sequence as zigzag ring attention (`data.group_attention = "ring"`);
//   Ulysses over a block of g      one long sequence split in g contiguous slices, all-to-alls to whole sequences
//                                  of H / g heads around the blockwise kernel (`"ulysses"`; heads divisible by g).
// One op per group size, each over its block communicator (DocumentGroups), made once, with buffers for
// `capacity` tokens per rank; an item only changes the op's split of its sequence. It reports the most any of
// them saves per layer, so one activation set serves every item, and that the backward reads the local qkv.

import TesseraComm
import TesseraKernels
import TesseraModel

public final class DocumentAttention: AttentionOp {
    public let local: AttentionOp
    let groups: [Int: SequenceParallelAttention]
    public let blocks: DocumentGroups?
    public let ulysses: Bool
    /// The op the next calls run on.
    public private(set) var current: AttentionOp

    public var documents: DocumentStarts? {
        get { current.documents }
        set { current.documents = newValue }
    }

    /// `local`: the model's own attention; `blocks`: this rank's block communicators (nil on one rank); `sizes`: the
    /// group sizes the run's schedule may give an item (an op for each; nil: every size from 2 to the ranks).
    public init(local: AttentionOp, blocks: DocumentGroups?, sizes: [Int]? = nil, heads: Int, kvHeads: Int, headDim: Int,
                capacity: Int, ulysses: Bool, precision: Precision, onError: @escaping (Error) -> Never) {
        self.local = local; self.blocks = blocks; self.ulysses = ulysses; current = local
        var groups: [Int: SequenceParallelAttention] = [:]
        if let blocks {
            for g in sizes ?? DocumentScheduler.groupSizes(ranks: blocks.ranks) where g > 1 {
                let room = Self.layout(length: g * (capacity + capacity % 2), size: g, rank: blocks.rankInBlock(size: g), ulysses: ulysses)
                let comm = blocks.communicator(size: g)
                let op = SequenceParallelAttention(heads: heads, kvHeads: kvHeads, headDim: headDim, layout: room,
                                                   ring: ulysses ? nil : comm, ulysses: ulysses ? comm : nil, maxBatch: 1,
                                                   precision: precision)
                op.onError = onError
                groups[g] = op
            }
        }
        self.groups = groups
    }

    /// The split of a row of `length` tokens over a block of `size` ranks, this rank being `rank` in it.
    public static func layout(length: Int, size g: Int, rank: Int, ulysses: Bool) -> SequenceLayout {
        ulysses ? SequenceLayout(seqLen: length, ring: 1, ulysses: g, ringRank: 0, ulyssesRank: rank)
                : SequenceLayout(seqLen: length, ring: g, ulysses: 1, ringRank: rank, ulyssesRank: 0)
    }

    /// Runs the following calls on an item of `size` ranks whose row has `length` tokens (a multiple of 2·size when
    /// size > 1); returns the split (nil for a row on this rank alone).
    @discardableResult
    public func use(size g: Int, length: Int) -> SequenceLayout? {
        guard g > 1 else { current = local; return nil }
        guard let op = groups[g], let blocks else { preconditionFailure("no document group of \(g) ranks") }
        let l = Self.layout(length: length, size: g, rank: blocks.rankInBlock(size: g), ulysses: ulysses)
        op.use(layout: l)
        current = op
        return l
    }

    /// Bytes of the group ops' buffers besides what they save per layer (SequenceParallelAttention.extraBytes).
    public var extraBytes: Int { groups.values.reduce(0) { $0 + $1.extraBytes } }

    /// Bytes every group op has sent so far.
    public var bytesSent: Int { blocks?.communicators.reduce(0) { $0 + $1.bytesSent } ?? 0 }

    // MARK: AttentionOp

    public func savedFloats(batch: Int, tokens: Int) -> Int {
        groups.values.reduce(local.savedFloats(batch: batch, tokens: tokens)) { max($0, $1.savedFloats(batch: batch, tokens: tokens)) }
    }
    public var backwardReadsLocalQKV: Bool { true }  // rows and rings read it

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch) {
        current.forward(qkv: qkv, out: out, lse: lse, saved: saved, batch: batch, tokens: tokens, layer: layer, scratch: scratch)
    }
    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                         tokens: Int, layer: Int, scratch: Scratch) {
        current.backward(dqkv: dqkv, dout: dout, out: out, lse: lse, qkv: qkv, saved: saved, batch: batch, tokens: tokens,
                         layer: layer, scratch: scratch)
    }
    public func prepareBackward(qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int) {
        current.prepareBackward(qkv: qkv, saved: saved, batch: batch, tokens: tokens, layer: layer)
    }
    public func poll() { current.poll() }
}
