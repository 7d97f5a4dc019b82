// The model's attention when the sequence is split over a sequence group (ring × Ulysses ranks).
//
// Ulysses (U > 1): one all-to-all turns q, k, v from [local tokens, all heads] into [the ring-local
// sequence, H / U heads]; the core (local or ring) attends; a second all-to-all turns the output back.
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
    public let heads: Int, headDim: Int
    public let layout: SequenceLayout
    public let ulysses: Communicator?
    public let core: AttentionCore
    let u: Int
    let sendBuf: FloatBuffer, recvBuf: FloatBuffer, doutH: FloatBuffer, dqkvH: FloatBuffer
    /// bf16 all-to-all buffers (bf16 only).
    let send16: UnsafeMutableBufferPointer<UInt16>, recv16: UnsafeMutableBufferPointer<UInt16>
    public let precision: Precision
    /// Where communication failures go (the trainer aborts the job naming rank, operation and step).
    public var onError: (Error) -> Never = { MPIRuntime.abort("\($0); aborting the job") }

    public init(heads: Int, headDim: Int, layout: SequenceLayout, ring: Communicator?, ulysses: Communicator?,
                maxBatch: Int, precision: Precision = .fp32) {
        self.heads = heads; self.headDim = headDim; self.layout = layout; self.precision = precision
        u = layout.ulysses
        self.ulysses = u > 1 ? ulysses : nil
        let hc = heads / u
        if layout.ring > 1, let ring {
            core = RingCore(comm: ring, layout: layout, heads: hc, headDim: headDim, maxBatch: maxBatch, precision: precision)
        } else {
            core = LocalCore(headDim: headDim)
        }
        let c = heads * headDim, full = maxBatch * layout.local * 3 * c
        if u > 1 {
            sendBuf = FloatBuffer(full); recvBuf = FloatBuffer(full)
            doutH = FloatBuffer(maxBatch * layout.local * c); dqkvH = FloatBuffer(full)
        } else {
            sendBuf = FloatBuffer(0); recvBuf = FloatBuffer(0); doutH = FloatBuffer(0); dqkvH = FloatBuffer(0)
        }
        let half = u > 1 && precision == .bf16 ? full : 0
        send16 = .allocate(capacity: half); recv16 = .allocate(capacity: half)
    }

    deinit { send16.deallocate(); recv16.deallocate() }

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

    /// Ulysses: per layer, the head-sharded qkv [B, ringLocal, 3·H/U·hd] then the output [B, ringLocal, H/U·hd]
    /// (as many floats as the local qkv and output: B · local tokens · 4 · H · hd).
    public func savedFloats(batch: Int, tokens: Int) -> Int {
        Self.savedFloats(batch: batch, tokens: tokens, heads: heads, headDim: headDim, ulysses: u)
    }
    /// The same, before any op exists (the memory preflight): Ulysses keeps its gathered q, k, v and output.
    public static func savedFloats(batch: Int, tokens: Int, heads: Int, headDim: Int, ulysses: Int) -> Int {
        ulysses > 1 ? batch * tokens * 4 * heads * headDim : 0
    }
    /// Whether the backward reads the local fused qkv (Ulysses reads its head-sharded copy instead).
    public static func readsLocalQKV(ulysses: Int) -> Bool { ulysses == 1 }

    /// Ulysses' backward reads its head-sharded copy of q, k, v (in `saved`), not the local fused qkv.
    public var backwardReadsLocalQKV: Bool { Self.readsLocalQKV(ulysses: u) }

    /// Bytes of the communication buffers and the ring's buffers (the saved tensors are in the activations).
    public var extraBytes: Int {
        [sendBuf, recvBuf, doutH, dqkvH].reduce(0) { $0 + $1.bytes } + 2 * (send16.count + recv16.count)
            + ((core as? RingCore)?.bytes ?? 0)
    }

    /// What `init` allocates for these shapes, without allocating (for memory planning).
    public static func plannedBytes(heads: Int, headDim: Int, layout: SequenceLayout, layers: Int, maxBatch: Int,
                                    precision: Precision = .fp32) -> Int {
        let c = heads * headDim, full = maxBatch * layout.local * 3 * c, out = maxBatch * layout.local * c
        var floats = 0
        if layout.ulysses > 1 { floats += layers * (full + out) + 3 * full + out + (precision == .bf16 ? full : 0) }
        let ring = layout.ring > 1
            ? RingCore.plannedBytes(layout: layout, heads: heads / layout.ulysses, headDim: headDim, maxBatch: maxBatch,
                                    precision: precision) : 0
        return 4 * floats + ring
    }

    // MARK: Ulysses all-to-alls

    /// [B, Tl, parts·H·hd] on each rank → [B, U·Tl, parts·(H/U)·hd]: head group j goes to rank j.
    func toHeadSharded(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch b: Int, tokens tl: Int,
                       parts: Int, label: String) throws {
        let hc = heads / u, w = hc * headDim, c = heads * headDim, block = b * tl * parts * w
        let send = sendBuf.ptr, recv = recvBuf.ptr
        for j in 0..<u { for bi in 0..<b { for t in 0..<tl { for p in 0..<parts {
            (send + j * block + ((bi * tl + t) * parts + p) * w).update(from: src + (bi * tl + t) * parts * c + p * c + j * w, count: w)
        }}}}
        try exchange(count: block, label: label)
        let T = u * tl
        for i in 0..<u { for bi in 0..<b { for t in 0..<tl {
            (dst + (bi * T + i * tl + t) * parts * w).update(from: recv + i * block + (bi * tl + t) * parts * w, count: parts * w)
        }}}
    }

    /// The inverse: [B, U·Tl, parts·(H/U)·hd] → [B, Tl, parts·H·hd]: token slice i goes to rank i.
    func toTokenSharded(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, batch b: Int, tokens tl: Int,
                        parts: Int, label: String) throws {
        let hc = heads / u, w = hc * headDim, c = heads * headDim, block = b * tl * parts * w, T = u * tl
        let send = sendBuf.ptr, recv = recvBuf.ptr
        for i in 0..<u { for bi in 0..<b { for t in 0..<tl {
            (send + i * block + (bi * tl + t) * parts * w).update(from: src + (bi * T + i * tl + t) * parts * w, count: parts * w)
        }}}
        try exchange(count: block, label: label)
        for j in 0..<u { for bi in 0..<b { for t in 0..<tl { for p in 0..<parts {
            (dst + (bi * tl + t) * parts * c + p * c + j * w).update(from: recv + j * block + ((bi * tl + t) * parts + p) * w, count: w)
        }}}}
    }

    // MARK: AttentionOp

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch) {
        do {
            if u == 1 {
                try core.forward(qkv: qkv, out: out, lse: lse, batch: batch, tokens: tokens, heads: heads, layer: layer,
                                 scratch: scratch)
                return
            }
            let T = u * tokens, qkvH = saved, outH = saved + batch * tokens * 3 * heads * headDim
            try toHeadSharded(qkv, qkvH, batch: batch, tokens: tokens, parts: 3, label: "ulysses qkv L\(layer)")
            try core.forward(qkv: qkvH, out: outH, lse: lse, batch: batch, tokens: T,
                             heads: heads / u, layer: layer, scratch: scratch)
            precision.roundOperand(outH, count: batch * T * (heads / u) * headDim)
            try toTokenSharded(outH, out, batch: batch, tokens: tokens, parts: 1, label: "ulysses out L\(layer)")
        } catch { onError(error) }
    }

    public func poll() { (core as? RingCore)?.pollPrefetch() }

    public func prepareBackward(qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int) {
        do {
            if u == 1 {
                try core.prepareBackward(qkv: qkv, batch: batch, tokens: tokens, heads: heads, layer: layer)
            } else {
                try core.prepareBackward(qkv: saved, batch: batch, tokens: u * tokens, heads: heads / u, layer: layer)
            }
        } catch { onError(error) }
    }

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                         tokens: Int, layer: Int, scratch: Scratch) {
        do {
            if u == 1 {
                try core.backward(dqkv: dqkv, dout: dout, out: out, lse: lse, qkv: qkv, batch: batch, tokens: tokens,
                                  heads: heads, layer: layer, scratch: scratch)
                return
            }
            let T = u * tokens
            try toHeadSharded(dout, doutH.ptr, batch: batch, tokens: tokens, parts: 1, label: "ulysses dout L\(layer)")
            dqkvH.ptr.update(repeating: 0, count: batch * T * 3 * (heads / u) * headDim)
            let qkvH = saved, outH = saved + batch * tokens * 3 * heads * headDim
            try core.backward(dqkv: dqkvH.ptr, dout: doutH.ptr, out: outH, lse: lse, qkv: qkvH,
                              batch: batch, tokens: T, heads: heads / u, layer: layer, scratch: scratch)
            precision.roundOperand(dqkvH.ptr, count: batch * T * 3 * (heads / u) * headDim)
            try toTokenSharded(dqkvH.ptr, dqkv, batch: batch, tokens: tokens, parts: 3, label: "ulysses dqkv L\(layer)")
        } catch { onError(error) }
    }
}
