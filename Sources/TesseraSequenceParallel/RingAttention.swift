// Attention over a ring-local sequence, for some heads. `LocalCore` when the sequence is not split across
// ring ranks; `RingCore` when it is (context parallel).
//
// Ring forward: every rank packs its keys/values and passes them around the ring (Isend to the next rank,
// Irecv from the previous one into the other half of a double buffer) while it attends its queries to
// the block it holds, with the blockwise kernel; each (query chunk, key chunk) pair is one kernel call at
// the chunks' global positions, pairs the causal mask hides entirely are skipped, and partial outputs are
// merged by log-sum-exp. Backward: keys/values travel the ring again, followed by their gradient
// accumulators (dK, dV); each rank adds its contribution from the saved output and log-sum-exp, and after
// R steps every accumulator is back at its owner, complete.
//
// In bf16 the key/value blocks travel as bf16 (half the bytes; they are bf16 values already, so nothing changes
// but the bytes): each float block has a 16-bit twin that is what is sent and received, narrowed once from this
// rank's own block and widened once after each receive; a received block is passed on from its twin. The dK, dV
// accumulators are gradient sums and stay fp32.
//
// Grouped-query attention (KV key/value heads for H query heads): a fused row is (H + 2·KV)·hd wide and a
// key/value block, like its dK|dV accumulator, [batch, tokens, 2·KV·hd]; only those travel, so the ring's
// bytes shrink with KV while the queries, outputs and log-sum-exps keep H heads.

import TesseraComm
import TesseraKernels

/// Attention of a fused qkv [batch, tokens, (heads + 2·kvHeads)·hd] → out [batch, tokens, heads·hd],
/// lse [batch, heads, tokens].
public protocol AttentionCore: AnyObject {
    /// Documents of the rows (global positions), for block-causal attention; nil: causal over whole rows.
    var documents: DocumentStarts? { get set }
    /// Called before the layer's MLP backward: start any communication the attention backward will need.
    func prepareBackward(qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int) throws
    func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                 batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int, scratch: Scratch) throws
    /// Writes dq and accumulates dk, dv into dqkv (zeroed by the caller).
    func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                  lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                  layer: Int, scratch: Scratch) throws
}

/// The whole sequence is here: one causal kernel call.
public final class LocalCore: AttentionCore {
    let headDim: Int
    public var documents: DocumentStarts?
    public init(headDim: Int) { self.headDim = headDim }
    public func prepareBackward(qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int) {}

    func fused(batch: Int, tokens: Int, heads: Int, kvHeads: Int) -> (AttentionLayout, HeadWidths) {
        var g = AttentionLayout.fused(batch: batch, t: tokens, heads: heads, headDim: headDim, kvHeads: kvHeads)
        g.documents = documents
        return (g, HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim))
    }

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int, scratch: Scratch) {
        let (g, w) = fused(batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads)
        Attention.forward(out: out, lse: lse, q: qkv, k: qkv + w.q, v: qkv + w.q + w.kv, layout: g, scratch: scratch)
    }

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int,
                         kvHeads: Int, layer: Int, scratch: Scratch) {
        let (g, w) = fused(batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads)
        Attention.backward(dq: dqkv, dk: dqkv + w.q, dv: dqkv + w.q + w.kv, dout: dout, out: out, lse: lse, q: qkv,
                           k: qkv + w.q, v: qkv + w.q + w.kv, layout: g, scratch: scratch)
    }
}

/// Polls the requests in flight from inside the attention kernel (one worker, between blocks).
final class RequestPoller: KernelProgress, @unchecked Sendable {
    var requests: [Request] = []
    var failure: Error?
    func poll() {
        guard failure == nil else { return }
        do { try Request.testAll(requests) } catch { failure = error }
    }
    func check() throws { if let f = failure { failure = nil; throw f } }
}

public final class RingCore: AttentionCore {
    public let comm: Communicator
    public var documents: DocumentStarts?
    /// The sequence split of the next call (`use` changes it between micro-batches of different lengths).
    public private(set) var layout: SequenceLayout
    /// Ring-local tokens the buffers hold (the layout given at init).
    public let capacity: Int
    let headDim: Int
    let kv: [FloatBuffer], dkv: [FloatBuffer]
    let partOut: FloatBuffer, partLse: FloatBuffer, chunkLse: [FloatBuffer]
    /// Attention FLOPs this rank computed (QKᵀ and PV, forward), for the balance report.
    public private(set) var forwardFlops = 0.0
    let poller = RequestPoller()
    /// Time blocked waiting for blocks after computing (ns), forward and backward.
    public private(set) var waitNs: (forward: UInt64, backward: UInt64) = (0, 0)
    /// Message timing for the exposure analysis, per kind (0 kv forward, 1 kv backward, 2 dK/dV): when each
    /// message this rank sent was posted, and when this rank started and ended waiting for each message it
    /// received. Messages of one kind between two ranks arrive in order, so the i-th receive here is the
    /// previous rank's i-th send.
    public private(set) var sendPosts: [[UInt64]] = [[], [], []]
    public private(set) var receiveWaits: [[(start: UInt64, end: UInt64)]] = [[], [], []]
    /// Record message timing (off by default: the arrays grow every step).
    public var recordTiming = false
    public let precision: Precision
    /// bf16 twins of kv[0], kv[1], preBuf[0], preBuf[1] and of this rank's own block (bf16 only).
    let kv16: [UnsafeMutablePointer<UInt16>], pre16: [UnsafeMutablePointer<UInt16>], own16: UnsafeMutablePointer<UInt16>
    let twinCount: Int
    var lowp: Bool { precision == .bf16 }

    /// `maxBatch` × ring-local tokens × the head widths bound every buffer (`kvHeads` nil: `heads`).
    public init(comm: Communicator, layout: SequenceLayout, heads: Int, kvHeads: Int? = nil, headDim: Int, maxBatch: Int,
                precision: Precision = .fp32) {
        self.comm = comm; self.layout = layout; self.headDim = headDim; self.precision = precision
        capacity = layout.ringLocal
        let kvCount = maxBatch * layout.ringLocal * HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim).packed
        twinCount = precision == .bf16 ? kvCount : 0
        let tc = twinCount
        kv16 = [.allocate(capacity: tc), .allocate(capacity: tc)]
        pre16 = [.allocate(capacity: tc), .allocate(capacity: tc)]
        own16 = .allocate(capacity: tc)
        kv = [FloatBuffer(kvCount), FloatBuffer(kvCount)]
        dkv = [FloatBuffer(kvCount), FloatBuffer(kvCount), FloatBuffer(kvCount)]
        preBuf = [FloatBuffer(kvCount), FloatBuffer(kvCount)]
        partOut = FloatBuffer(maxBatch * layout.chunk * heads * headDim)
        partLse = FloatBuffer(maxBatch * heads * layout.chunk)
        chunkLse = [FloatBuffer(maxBatch * heads * layout.chunk), FloatBuffer(maxBatch * heads * layout.chunk)]
    }

    /// Runs the following calls on another split of a sequence over the same ring (variable-length sequences:
    /// each of another length), at most `capacity` ring-local tokens.
    public func use(_ l: SequenceLayout) {
        precondition(l.ring == comm.size && l.ringLocal <= capacity,
                     "ring attention: a split of \(l.ringLocal) tokens over \(l.ring) ranks does not fit \(capacity) tokens over \(comm.size)")
        layout = l
    }

    deinit {
        // No MPI call here (this may run after MPI_Finalize). A request never waited for (the last layer's own
        // send; a prefetch abandoned by an error) may still read or fill a twin: then the twins stay allocated.
        let inFlight = ownSend != nil || pendingPreSend.contains { $0 != nil } || prefetch.contains { $0 != nil }
        if !inFlight { (kv16 + pre16 + [own16]).forEach { $0.deallocate() } }
    }

    /// Sends n values of a key/value block: the float block, or in bf16 its twin (which must hold it).
    func sendKV(_ block: UnsafeMutablePointer<Float>, twin: UnsafeMutablePointer<UInt16>, count n: Int,
                to dest: Int, tag: Int, label: String) throws -> Request {
        lowp ? try comm.isend(twin, count: n, to: dest, tag: tag, label: label)
             : try comm.isend(block, count: n, to: dest, tag: tag, label: label)
    }

    /// Receives a key/value block into `block` (in bf16: into its twin; `landed` widens it after the wait).
    func receiveKV(_ block: UnsafeMutablePointer<Float>, twin: UnsafeMutablePointer<UInt16>, count n: Int, from src: Int,
                   tag: Int, label: String) throws -> Request {
        lowp ? try comm.irecv(twin, count: n, from: src, tag: tag, label: label)
             : try comm.irecv(block, count: n, from: src, tag: tag, label: label)
    }

    /// After a `receiveKV` completed: the block in float (bf16: widened from its twin).
    func landed(_ block: UnsafeMutablePointer<Float>, twin: UnsafeMutablePointer<UInt16>, count n: Int) {
        if lowp { BF16.widen(twin, into: block, count: n) }
    }

    var next: Int { comm.ringPosition.next }
    var prev: Int { comm.ringPosition.prev }

    /// Copies k and v of the fused qkv into a packed kv buffer [batch, tokens, 2·kvHeads·hd].
    func packKV(_ qkv: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, w: HeadWidths) {
        for row in 0..<(batch * tokens) {
            (dst + row * w.packed).update(from: qkv + row * w.row + w.q, count: w.packed)
        }
    }

    /// The kernel layout of query chunk q (local row qLocal, global position qGlobal) against key chunk k.
    func pairLayout(batch: Int, w: HeadWidths, tokens: Int, q: (local: Int, global: Int, count: Int),
                    k: (local: Int, global: Int, count: Int), oRow: Int, oBatch: Int) -> AttentionLayout {
        var g = AttentionLayout(batch: batch, heads: w.heads, headDim: headDim, tq: q.count, tk: k.count,
                                qOffset: q.global, kOffset: k.global, causal: true,
                                qRow: w.row, kRow: w.packed, vRow: w.packed, oRow: oRow,
                                qBatch: tokens * w.row, kBatch: tokens * w.packed, vBatch: tokens * w.packed, oBatch: oBatch,
                                kvHeads: w.kvHeads)
        g.documents = documents
        return g
    }

    static func masked(_ q: (local: Int, global: Int, count: Int), _ k: (local: Int, global: Int, count: Int)) -> Bool {
        k.global > q.global + q.count - 1
    }

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int, scratch: Scratch) throws {
        precondition(tokens == layout.ringLocal, "ring attention expects the ring-local sequence (\(layout.ringLocal) tokens), got \(tokens)")
        let w = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim)
        let c = w.q, R = comm.size, r = comm.rank, ch = layout.chunk, n = batch * tokens * w.packed
        precondition(n <= kv[0].count, "ring attention: a key/value block of \(n) floats exceeds the \(kv[0].count) allocated")
        packKV(qkv, into: kv[0].ptr, batch: batch, tokens: tokens, w: w)
        if lowp && R > 1 { BF16.narrow(kv[0].ptr, into: kv16[0], count: n) }
        out.update(repeating: 0, count: batch * tokens * c)
        for l in chunkLse { l.ptr.update(repeating: -.infinity, count: batch * heads * ch) }
        let myRuns = layout.runs(ringRank: r)
        let tag = MessageTag.ringForwardKV(layer: layer)
        for s in 0..<R {
            let cur = kv[s % 2].ptr
            var reqs: [Request] = []
            if s < R - 1 {
                reqs.append(try receiveKV(kv[(s + 1) % 2].ptr, twin: kv16[(s + 1) % 2], count: n, from: prev, tag: tag,
                                          label: "ring kv L\(layer) s\(s + 1)"))
                reqs.append(try sendKV(cur, twin: kv16[s % 2], count: n, to: next, tag: tag, label: "ring kv L\(layer) s\(s)"))
                if recordTiming { sendPosts[0].append(nowNsSP()) }
            }
            let src = comm.ringPosition.source(afterHops: s)
            poller.requests = reqs
            for (qi, q) in myRuns.enumerated() {
                for k in layout.runs(ringRank: src) where !Self.masked(q, k) {
                    let g = pairLayout(batch: batch, w: w, tokens: tokens, q: q, k: k, oRow: c, oBatch: ch * c)
                    Attention.forward(out: partOut.ptr, lse: partLse.ptr, q: qkv + q.local * w.row,
                                      k: cur + k.local * w.packed, v: cur + k.local * w.packed + w.kv, layout: g, scratch: scratch,
                                      progress: reqs.isEmpty ? nil : poller)
                    try poller.check()
                    Attention.merge(accOut: out + q.local * c, accLse: chunkLse[qi].ptr, accRow: c, accBatch: tokens * c,
                                    partOut: partOut.ptr, partLse: partLse.ptr, batch: batch, t: ch, heads: heads, headDim: headDim)
                    forwardFlops += Self.pairFlops(q, k, batch: batch, heads: heads, headDim: headDim)
                    try Request.testAll(reqs)
                }
            }
            let t0 = nowNsSP()
            try Request.waitAll(reqs)
            let t1 = nowNsSP()
            waitNs.forward += t1 - t0
            if recordTiming && !reqs.isEmpty { receiveWaits[0].append((t0, t1)) }
            if s < R - 1 { landed(kv[(s + 1) % 2].ptr, twin: kv16[(s + 1) % 2], count: n) }
        }
        // lse [batch, heads, tokens] from the per-chunk accumulators.
        for (qi, q) in myRuns.enumerated() {
            for bh in 0..<(batch * heads) {
                (lse + bh * tokens + q.local).update(from: chunkLse[qi].ptr + bh * ch, count: ch)
            }
        }
    }

    // Backward order: at step s rank r works on the block of ring rank r+1+s, so its own block comes last and
    // its gradient accumulator ends complete where it belongs (nothing to send after the last compute). Key/value
    // blocks and accumulators both move to the previous rank. A layer's first block (the next rank's) is
    // requested one layer ahead (`prepareBackward`): the model asks for layer l−1's while layer l's attention
    // backward runs, whose kernels poll it, so it arrives hidden; the top layer's is asked for before the
    // backward pass's first block and polled between its ops.

    /// Per layer parity: the prefetched first block and the requests of the prefetch. This rank's own block
    /// goes to the previous rank straight from the saved qkv (an MPI vector type: the k and v columns).
    /// (Allocated with the other blocks at init, so that what the ring holds is known before the first step.)
    let preBuf: [FloatBuffer]
    var ownSend: Request?
    var prefetch: [(layer: Int, requests: [Request])?] = [nil, nil]
    /// Index of each prefetch's entry in sendPosts[1].
    var prefetchPost: [Int?] = [nil, nil]

    /// Drives pending prefetches (between the model's other backward ops; errors surface at their waits).
    public func pollPrefetch() {
        for p in prefetch { if let p { _ = try? Request.testAll(p.requests) } }
    }

    var prefetchRequests: [Request] { prefetch.compactMap { $0?.requests }.flatMap { $0 } }

    public func prepareBackward(qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int, kvHeads: Int, layer: Int) throws {
        let w = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim)
        let R = comm.size, n = batch * tokens * w.packed, slot = layer % 2
        guard R > 1, prefetch[slot]?.layer != layer else { return }
        if let p = prefetch[slot] { try Request.waitAll(p.requests) }  // an older layer's, never consumed (eval)
        if let old = pendingPreSend[slot] { try old.wait(); pendingPreSend[slot] = nil }
        if let o = ownSend { try o.wait(); ownSend = nil }
        let tag = MessageTag.ringBackwardKV(layer: layer)
        let recv = try receiveKV(preBuf[slot].ptr, twin: pre16[slot], count: n, from: next, tag: tag, label: "ring kv bwd L\(layer) s0")
        let own: Request
        if lowp {
            for row in 0..<(batch * tokens) { BF16.narrow(qkv + row * w.row + w.q, into: own16 + row * w.packed, count: w.packed) }
            own = try comm.isend(own16, count: n, to: prev, tag: tag, label: "ring kv bwd L\(layer) own")
        } else {
            own = try comm.isendRows(qkv + w.q, rows: batch * tokens, width: w.packed, stride: w.row, to: prev, tag: tag,
                                     label: "ring kv bwd L\(layer) own")
        }
        let reqs = [recv, own]
        ownSend = reqs[1]
        if recordTiming { prefetchPost[slot] = sendPosts[1].count; sendPosts[1].append(nowNsSP()) }
        prefetch[slot] = (layer, reqs)
    }
    /// The send of a prefetch buffer onward to the previous rank (it must finish before the buffer is reused).
    var pendingPreSend: [Request?] = [nil, nil]

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, batch: Int, tokens: Int, heads: Int,
                         kvHeads: Int, layer: Int, scratch: Scratch) throws {
        let w = HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim)
        let c = w.q, R = comm.size, r = comm.rank, ch = layout.chunk, n = batch * tokens * w.packed
        let myRuns = layout.runs(ringRank: r), slot = layer % 2
        for (qi, q) in myRuns.enumerated() {
            for bh in 0..<(batch * heads) {
                (chunkLse[qi].ptr + bh * ch).update(from: lse + bh * tokens + q.local, count: ch)
            }
        }
        if prefetch[slot]?.layer != layer {
            try prepareBackward(qkv: qkv, batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, layer: layer)
        }
        let tag = MessageTag.ringBackwardKV(layer: layer), dtag = MessageTag.ringBackwardGradient(layer: layer)
        // kv[s % 2]: this step's block. dkv[0], dkv[1]: accumulators being built, then sent (double buffered);
        // dkv[2]: the accumulator arriving from the next rank.
        var kvSend: Request? = nil                       // the block sent on to the previous rank
        var kvRecv: Request? = nil                       // the next step's block
        var incoming: Request? = nil
        var sending: [Request?] = [nil, nil]
        let first = prefetch[slot]!.requests
        prefetch[slot] = nil
        prefetchPost[slot] = nil
        for s in 0..<R {
            let t0 = nowNsSP()
            if s == 0 {
                try first[0].wait()
                if recordTiming { receiveWaits[1].append((t0, nowNsSP())) }
                landed(preBuf[slot].ptr, twin: pre16[slot], count: n)
            } else if let rr = kvRecv {
                try rr.wait()
                if recordTiming { receiveWaits[1].append((t0, nowNsSP())) }
                landed(kv[s % 2].ptr, twin: kv16[s % 2], count: n)
            }
            waitNs.backward += nowNsSP() - t0
            // Step 0 works on the prefetched block; later steps on kv[s % 2]; the last on this rank's own block.
            let cur: UnsafeMutablePointer<Float>
            if s == R - 1 {
                // Own block, packed again (the own-block buffer already serves the next layer's prefetch).
                cur = kv[s % 2].ptr
                if s >= 2, let k = kvSend { try k.wait(); kvSend = nil }   // kv[s % 2] was sent on two steps ago
                packKV(qkv, into: cur, batch: batch, tokens: tokens, w: w)
            } else {
                cur = s == 0 ? preBuf[slot].ptr : kv[s % 2].ptr
            }
            // Pass this block on to the previous rank (it needs it next step) and fetch the next one.
            kvRecv = nil
            if s + 1 <= R - 2 {
                if let k = kvSend { try k.wait() }           // kv[(s+1) % 2] is free once its last send is done
                kvRecv = try receiveKV(kv[(s + 1) % 2].ptr, twin: kv16[(s + 1) % 2], count: n, from: next, tag: tag,
                                       label: "ring kv bwd L\(layer) s\(s + 1)")
                // A received block (never this rank's own, which is last): pass its twin on as it came.
                kvSend = try sendKV(cur, twin: s == 0 ? pre16[slot] : kv16[s % 2], count: n, to: prev, tag: tag,
                                    label: "ring kv bwd L\(layer) s\(s)")
                if recordTiming { sendPosts[1].append(nowNsSP()) }
                if s == 0 { pendingPreSend[slot] = kvSend }
            }
            let acc = dkv[s % 2].ptr
            if let w = sending[s % 2] { try w.wait() }
            acc.update(repeating: 0, count: n)
            let src = comm.ringPosition.sourceFlowingBack(afterHops: s + 1)
            poller.requests = [kvRecv, kvSend, ownSend, incoming, sending[(s + 1) % 2]].compactMap { $0 } + prefetchRequests
            for (qi, q) in myRuns.enumerated() {
                for k in layout.runs(ringRank: src) where !Self.masked(q, k) {
                    let g = pairLayout(batch: batch, w: w, tokens: tokens, q: q, k: k, oRow: c, oBatch: tokens * c)
                    let kp = k.local * w.packed
                    Attention.backward(dq: dqkv + q.local * w.row, dk: acc + kp, dv: acc + kp + w.kv,
                                       dout: dout + q.local * c, out: out + q.local * c, lse: chunkLse[qi].ptr,
                                       q: qkv + q.local * w.row, k: cur + kp, v: cur + kp + w.kv,
                                       layout: g, scratch: scratch, progress: poller)
                    try poller.check()
                }
            }
            // This block's accumulator from the ranks that worked on it before (sent while this step computed).
            if let inc = incoming {
                let w0 = nowNsSP()
                try inc.wait()
                let w1 = nowNsSP()
                if recordTiming { receiveWaits[2].append((w0, w1)) }
                waitNs.backward += w1 - w0
                let d = dkv[2].ptr
                for j in 0..<n { acc[j] += d[j] }
                incoming = nil
            }
            if s < R - 1 {
                sending[s % 2] = try comm.isend(acc, count: n, to: prev, tag: dtag, label: "ring dkv L\(layer) s\(s)")
                if recordTiming { sendPosts[2].append(nowNsSP()) }
                incoming = try comm.irecv(dkv[2].ptr, count: n, from: next, tag: dtag, label: "ring dkv L\(layer) s\(s + 1)")
            }
        }
        let t0 = nowNsSP()
        try Request.waitAll(([kvSend] + sending).compactMap { $0 })
        pendingPreSend[slot] = nil
        waitNs.backward += nowNsSP() - t0
        // Own dK, dV (complete: the last step's accumulator) into the k and v columns of dqkv.
        let mine = dkv[(R - 1) % 2].ptr
        for row in 0..<(batch * tokens) {
            let d = dqkv + row * w.row + w.q, s = mine + row * w.packed
            for j in 0..<w.packed { d[j] += s[j] }
        }
    }

    /// Forward attention FLOPs of one (query chunk, key chunk) pair: 2 matmuls × 2·hd per visible score.
    static func pairFlops(_ q: (local: Int, global: Int, count: Int), _ k: (local: Int, global: Int, count: Int),
                          batch: Int, heads: Int, headDim: Int) -> Double {
        var visible = 0
        for i in 0..<q.count { visible += max(0, min(k.count, q.global + i - k.global + 1)) }
        return Double(batch * heads) * Double(visible) * 4 * Double(headDim)
    }

    public func resetCounters() {
        forwardFlops = 0; waitNs = (0, 0); sendPosts = [[], [], []]; receiveWaits = [[], [], []]
    }

    /// Communication time not hidden behind compute, (forward, backward) in seconds summed over the recorded
    /// messages: for each received message, the part of the wait after both sides were ready (the sender had
    /// posted it and this rank had started waiting). Waiting for a slower sender is load imbalance, not
    /// communication, and is excluded. Collective over the ring (each rank needs the previous rank's posts).
    public func exposedCommunication() throws -> (forward: Double, backward: Double) {
        var exposed = [0.0, 0.0, 0.0]
        for kind in 0..<3 {
            let mine = sendPosts[kind].map { Double($0) }
            var theirs = [Double](repeating: 0, count: receiveWaits[kind].count)
            try mine.withUnsafeBufferPointer { m in
                try theirs.withUnsafeMutableBufferPointer { t in
                    // Forward blocks go to the next rank; backward blocks and accumulators to the previous one.
                    let to = kind == 0 ? next : prev, from = kind == 0 ? prev : next
                    try comm.sendrecv(send: m.baseAddress!, sendCount: m.count, to: to, sendTag: 900 + kind,
                                      recv: t.baseAddress!, recvCount: t.count, from: from, recvTag: 900 + kind,
                                      label: "ring timing")
                }
            }
            for (i, w) in receiveWaits[kind].enumerated() {
                let ready = max(Double(w.start), theirs[i])
                exposed[kind] += max(0, Double(w.end) - ready) / 1e9
            }
        }
        return (exposed[0], exposed[1] + exposed[2])
    }

    /// Bytes of this core's buffers.
    public var bytes: Int {
        (kv + dkv + [partOut, partLse] + chunkLse + preBuf).reduce(0) { $0 + $1.bytes } + 5 * 2 * twinCount
    }

    /// The buffers `init` allocates, without allocating them.
    public static func plannedBytes(layout: SequenceLayout, heads: Int, kvHeads: Int? = nil, headDim: Int, maxBatch: Int,
                                    precision: Precision = .fp32) -> Int {
        let kvCount = maxBatch * layout.ringLocal * HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim).packed
        return 4 * (7 * kvCount + maxBatch * layout.chunk * heads * headDim + 3 * maxBatch * heads * layout.chunk)
            + (precision == .bf16 ? 5 * 2 * kvCount : 0)
    }

    /// The ring's communication alone, as `layers` forward and backward passes make it, with no compute:
    /// seconds (forward, backward) for the comparison with the waits measured in training.
    public func exchangeAlone(batch: Int, heads: Int, kvHeads: Int? = nil, layers: Int) throws -> (forward: Double, backward: Double) {
        let R = comm.size, n = batch * layout.ringLocal * HeadWidths(heads: heads, kvHeads: kvHeads, headDim: headDim).packed
        try comm.barrier()
        var t0 = nowNsSP()
        for layer in 0..<layers {
            for s in 0..<(R - 1) {
                let tag = MessageTag.ringForwardKV(layer: layer)
                try Request.waitAll([try receiveKV(kv[(s + 1) % 2].ptr, twin: kv16[(s + 1) % 2], count: n, from: prev, tag: tag, label: ""),
                                     try sendKV(kv[s % 2].ptr, twin: kv16[s % 2], count: n, to: next, tag: tag, label: "")])
            }
        }
        let forward = Double(nowNsSP() - t0) / 1e9
        try comm.barrier()
        t0 = nowNsSP()
        for layer in 0..<layers {
            // R − 1 key/value blocks and R − 1 accumulators, all to the previous rank.
            for s in 0..<(R - 1) {
                let tag = MessageTag.ringBackwardKV(layer: layer)
                try Request.waitAll([try receiveKV(kv[(s + 1) % 2].ptr, twin: kv16[(s + 1) % 2], count: n, from: next, tag: tag, label: ""),
                                     try sendKV(kv[s % 2].ptr, twin: kv16[s % 2], count: n, to: prev, tag: tag, label: ""),
                                     try comm.irecv(dkv[2].ptr, count: n, from: next, tag: MessageTag.ringBackwardGradient(layer: layer)),
                                     try comm.isend(dkv[s % 2].ptr, count: n, to: prev, tag: MessageTag.ringBackwardGradient(layer: layer))])
            }
        }
        return (forward, Double(nowNsSP() - t0) / 1e9)
    }
}

import Foundation
@inline(__always) func nowNsSP() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
