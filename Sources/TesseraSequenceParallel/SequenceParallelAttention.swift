// The model's attention when the sequence is split over a sequence group (ring × Ulysses ranks).
//
// Ulysses (U > 1): one all-to-all turns q, k, v from [local tokens, all heads] into [the ring-local
// sequence, H / U query heads and KV / U key/value heads] (grouped-query attention: `HeadWidths.share`);
// the core (local or ring) attends; a second all-to-all turns the output back.
// Backward mirrors it: dout goes to the head-sharded layout, the core's backward runs, and dq, dk, dv come
// back to the token-sharded layout. The head-sharded qkv and output of every layer are kept for backward,
// in the micro-batch's activations (`saved`: [qkvH | outH], see `savedFloats`), so several micro-batches
// can be alive at once (pipeline schedules).
// With U = 1 the core runs on the local tokens directly (ring attention, or one kernel call).
// In bf16 (`precision`) the all-to-alls carry bf16 (half the bytes): q, k, v and dout arrive as bf16 values
// already, and the core's output and dq, dk, dv are rounded before they travel, as the model would round them
// after; the head-sharded output kept for the backward is the rounded one, as in a single-rank run.

import TesseraComm
import TesseraKernels
import TesseraModel

public final class SequenceParallelAttention: AttentionOp {
    public let heads: Int, kvHeads: Int, headDim: Int
    /// The fused row's widths, whole and (Ulysses) one rank's share of the heads.
    let widths: HeadWidths, share: HeadWidths
    /// Widths of the parts of a qkv row and of an output row, as the all-to-alls cut them.
    let qkvParts: [Int], outParts: [Int]
    public private(set) var layout: SequenceLayout
    public let ulysses: Communicator?
    public let core: AttentionCore
    let u: Int
    let sendBuf: FloatBuffer, recvBuf: FloatBuffer, doutH: FloatBuffer, dqkvH: FloatBuffer
    /// bf16 all-to-all buffers (bf16 only).
    let send16: UnsafeMutableBufferPointer<UInt16>, recv16: UnsafeMutableBufferPointer<UInt16>
    public let precision: Precision
    /// Where communication failures go (the trainer aborts the job naming rank, operation and step).
    public var onError: (Error) -> Never = { MPIRuntime.abort("\($0); aborting the job") }

    /// `kvHeads`: key/value heads (grouped-query attention), nil for one per query head. With Ulysses they must
    /// divide evenly over its ranks (`kvSplitError`).
    public init(heads: Int, kvHeads: Int? = nil, headDim: Int, layout: SequenceLayout, ring: Communicator?,
                ulysses: Communicator?, maxBatch: Int, precision: Precision = .fp32) {
        if let message = Self.kvSplitError(heads: heads, kvHeads: kvHeads, ulysses: layout.ulysses) { preconditionFailure(message) }
        widths = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim)
        self.heads = heads; self.kvHeads = widths.kvHeads; self.headDim = headDim; self.layout = layout; self.precision = precision
        u = layout.ulysses
        share = widths.share(u)
        qkvParts = [widths.q, widths.kv, widths.kv]; outParts = [widths.q]
        self.ulysses = u > 1 ? ulysses : nil
        if layout.ring > 1, let ring {
            core = RingCore(comm: ring, layout: layout, heads: share.heads, kvHeads: share.kvHeads, headDim: headDim,
                            maxBatch: maxBatch, precision: precision)
        } else {
            core = LocalCore(headDim: headDim)
        }
        let full = maxBatch * layout.local * widths.row
        if u > 1 {
            sendBuf = FloatBuffer(full); recvBuf = FloatBuffer(full)
            doutH = FloatBuffer(maxBatch * layout.local * widths.q); dqkvH = FloatBuffer(full)
        } else {
            sendBuf = FloatBuffer(0); recvBuf = FloatBuffer(0); doutH = FloatBuffer(0); dqkvH = FloatBuffer(0)
        }
        let half = u > 1 && precision == .bf16 ? full : 0
        send16 = .allocate(capacity: half); recv16 = .allocate(capacity: half)
    }

    deinit { send16.deallocate(); recv16.deallocate() }

    /// A ring alone or Ulysses alone: run the following calls on another split of a sequence (variable-length
    /// sequences) over the same ranks, within the buffers made for the layout given at init.
    public func use(layout l: SequenceLayout) {
        precondition(l.ulysses == u && (u == 1 || (l.ring == 1 && layout.ring == 1)),
                     "a sequence split changes its length only: ring alone or Ulysses alone, over the same ranks")
        precondition(l.local <= sendBuf.count / max(widths.row, 1) || u == 1,
                     "Ulysses: \(l.local) tokens per rank exceed the buffers")
        (core as? RingCore)?.use(l)
        layout = l
    }

    /// Why Ulysses cannot split these heads, or nil: each of its ranks attends with whole key/value heads, so
    /// their count must be a multiple of U (the query heads then are too, being a multiple of it).
    public static func kvSplitError(heads: Int, kvHeads: Int?, ulysses: Int) -> String? {
        let kv = kvHeads ?? heads
        guard ulysses > 1, kv % ulysses != 0 else { return nil }
        return "model.n_kv_head = \(kv) is not divisible by parallelism.ulysses = \(ulysses) "
            + "(Ulysses splits key/value heads across its group)"
    }

    /// The all-to-all of `count` floats per rank from sendBuf into recvBuf, as bf16 in bf16 (the values are bf16
    /// already, so nothing changes but the bytes).
    func exchange(count: Int, label: String) throws {
        guard precision == .bf16 else {
            try ulysses!.alltoall(send: sendBuf.ptr, recv: recvBuf.ptr, count: count, label: label)
            return
        }
        BF16.narrow(sendBuf.ptr, into: send16.baseAddress!, count: u * count)
        try ulysses!.alltoall(send: send16.baseAddress!, recv: recv16.baseAddress!, count: count, label: label)
        BF16.widen(recv16.baseAddress!, into: recvBuf.ptr, count: u * count)
    }

    /// Ulysses: per layer, the head-sharded qkv [B, ringLocal, (H/U + 2·KV/U)·hd] then the output
    /// [B, ringLocal, H/U·hd] (as many floats as the local qkv and output: B · local tokens · (2·H + 2·KV) · hd).
    public func savedFloats(batch: Int, tokens: Int) -> Int {
        Self.savedFloats(batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, ulysses: u)
    }
    /// The same, before any op exists (the memory preflight): Ulysses keeps its gathered q, k, v and output.
    public static func savedFloats(batch: Int, tokens: Int, heads: Int, kvHeads: Int? = nil, headDim: Int, ulysses: Int) -> Int {
        let w = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim)
        return ulysses > 1 ? batch * tokens * (w.row + w.q) : 0
    }
    /// Whether the backward reads the local fused qkv (Ulysses reads its head-sharded copy instead).
    public static func readsLocalQKV(ulysses: Int) -> Bool { ulysses == 1 }

    /// Ulysses' backward reads its head-sharded copy of q, k, v (in `saved`), not the local fused qkv.
    public var backwardReadsLocalQKV: Bool { Self.readsLocalQKV(ulysses: u) }

    /// Indexed by global position, so the core uses them as they are: the ring's chunks know their global
    /// positions, and Ulysses' gathered sequence is the row in order.
    public var documents: DocumentStarts? {
        get { core.documents }
        set { core.documents = newValue }
    }

    /// Bytes of the communication buffers and the ring's buffers (the saved tensors are in the activations).
    public var extraBytes: Int {
        [sendBuf, recvBuf, doutH, dqkvH].reduce(0) { $0 + $1.bytes } + 2 * (send16.count + recv16.count)
            + ((core as? RingCore)?.bytes ?? 0)
    }

    /// What `init` allocates for these shapes, without allocating (for memory planning).
    public static func plannedBytes(heads: Int, kvHeads: Int? = nil, headDim: Int, layout: SequenceLayout, layers: Int,
                                    maxBatch: Int, precision: Precision = .fp32) -> Int {
        let w = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim), share = w.share(layout.ulysses)
        let full = maxBatch * layout.local * w.row, out = maxBatch * layout.local * w.q
        var floats = 0
        if layout.ulysses > 1 { floats += layers * (full + out) + 3 * full + out + (precision == .bf16 ? full : 0) }
        let ring = layout.ring > 1
            ? RingCore.plannedBytes(layout: layout, heads: share.heads, kvHeads: share.kvHeads, headDim: headDim,
                                    maxBatch: maxBatch, precision: precision) : 0
        return 4 * floats + ring
    }

    // MARK: Ulysses all-to-alls

    // A token row is the concatenation of `parts` (q | k | v, or the output alone), each a run of heads of
    // width parts[p]; rank j's share of a part is its j-th U-th (its heads), and a head-sharded row is the
    // shares of every part, in order, (Σ parts) / U wide.

    /// [B, Tl, Σ parts] on each rank → [B, U·Tl, Σ parts / U]: head share j goes to rank j.
    func toHeadSharded(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch b: Int, tokens tl: Int,
                       parts: [Int], label: String) throws {
        let row = parts.reduce(0, +), rowH = row / u, block = b * tl * rowH
        let send = sendBuf.ptr, recv = recvBuf.ptr
        for j in 0..<u { for r in 0..<(b * tl) {
            var from = src + r * row, to = send + j * block + r * rowH
            for width in parts {
                let w = width / u
                to.update(from: from + j * w, count: w)
                from += width; to += w
            }
        }}
        try exchange(count: block, label: label)
        let T = u * tl
        for i in 0..<u { for bi in 0..<b {
            (dst + (bi * T + i * tl) * rowH).update(from: recv + i * block + bi * tl * rowH, count: tl * rowH)
        }}
    }

    /// The inverse: [B, U·Tl, Σ parts / U] → [B, Tl, Σ parts]: token slice i goes to rank i.
    func toTokenSharded(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch b: Int, tokens tl: Int,
                        parts: [Int], label: String) throws {
        let row = parts.reduce(0, +), rowH = row / u, block = b * tl * rowH, T = u * tl
        let send = sendBuf.ptr, recv = recvBuf.ptr
        for i in 0..<u { for bi in 0..<b {
            (send + i * block + bi * tl * rowH).update(from: src + (bi * T + i * tl) * rowH, count: tl * rowH)
        }}
        try exchange(count: block, label: label)
        for j in 0..<u { for r in 0..<(b * tl) {
            var from = recv + j * block + r * rowH, to = dst + r * row
            for width in parts {
                let w = width / u
                (to + j * w).update(from: from, count: w)
                from += w; to += width
            }
        }}
    }

    // MARK: AttentionOp

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch) {
        do {
            if u == 1 {
                try core.forward(qkv: qkv, out: out, lse: lse, batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads,
                                 layer: layer, scratch: scratch)
                return
            }
            let T = u * tokens, qkvH = saved, outH = saved + batch * tokens * widths.row
            try toHeadSharded(qkv, qkvH, batch: batch, tokens: tokens, parts: qkvParts, label: "ulysses qkv L\(layer)")
            try core.forward(qkv: qkvH, out: outH, lse: lse, batch: batch, tokens: T,
                             heads: share.heads, kvHeads: share.kvHeads, layer: layer, scratch: scratch)
            precision.roundOperand(outH, count: batch * T * share.q)
            try toTokenSharded(outH, out, batch: batch, tokens: tokens, parts: outParts, label: "ulysses out L\(layer)")
        } catch { onError(error) }
    }

    public func poll() { (core as? RingCore)?.pollPrefetch() }

    public func prepareBackward(qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int) {
        do {
            if u == 1 {
                try core.prepareBackward(qkv: qkv, batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, layer: layer)
            } else {
                try core.prepareBackward(qkv: saved, batch: batch, tokens: u * tokens, heads: share.heads, kvHeads: share.kvHeads,
                                         layer: layer)
            }
        } catch { onError(error) }
    }

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                         tokens: Int, layer: Int, scratch: Scratch) {
        do {
            if u == 1 {
                try core.backward(dqkv: dqkv, dout: dout, out: out, lse: lse, qkv: qkv, batch: batch, tokens: tokens,
                                  heads: heads, kvHeads: kvHeads, layer: layer, scratch: scratch)
                return
            }
            let T = u * tokens
            try toHeadSharded(dout, doutH.ptr, batch: batch, tokens: tokens, parts: outParts, label: "ulysses dout L\(layer)")
            dqkvH.ptr.update(repeating: 0, count: batch * T * share.row)
            let qkvH = saved, outH = saved + batch * tokens * widths.row
            try core.backward(dqkv: dqkvH.ptr, dout: doutH.ptr, out: outH, lse: lse, qkv: qkvH, batch: batch, tokens: T,
                              heads: share.heads, kvHeads: share.kvHeads, layer: layer, scratch: scratch)
            precision.roundOperand(dqkvH.ptr, count: batch * T * share.row)
            try toTokenSharded(dqkvH.ptr, dqkv, batch: batch, tokens: tokens, parts: qkvParts, label: "ulysses dqkv L\(layer)")
        } catch { onError(error) }
    }
}
