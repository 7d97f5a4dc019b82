import Foundation

// Blockwise ("flash") attention for one or many heads, forward and backward.
//
// Forward, per (batch, head, query block): loop over key/value blocks with an online softmax
//   S = scale · Q Kᵀ;  m' = max(m, rowmax S);  P = exp(S - m');  l = l·e^(m-m') + rowsum P
//   acc = acc·e^(m-m') + P V;   at the end  O = acc / l,  lse = m + log l.
// Only O and the per-row log-sum-exp are kept: memory is linear in sequence length.
// Backward, per (batch, head), key blocks outer, query blocks inner, recomputing P = exp(S - lse):
//   dV += Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP - D),  D = rowsum(dO ∘ O);  dQ += scale·dS K;  dK += scale·dSᵀ Q.
// With the *global* O and lse this is exact also when keys arrive block by block from other ranks
// (ring attention), which is why both are inputs to the backward.
//
// Grouped-query attention: `kvHeads` key/value heads, each shared by heads / kvHeads consecutive query
// heads (query head h reads key/value head h / group) straight from the buffers, without copies. The
// backward runs one task per key/value head, its query heads in turn, so a shared head's dK and dV
// accumulate on one thread; with fewer (batch row, key/value head) pairs than threads, each pair's key blocks
// are dealt to several tasks, each with its own dQ, added into dq afterwards.
//
// Positions are explicit: query row i sits at global position qOffset + i, key row j at kOffset + j;
// with `causal`, key j is visible to query i iff kOffset + j <= qOffset + i. A query row that sees no key
// gets O = 0 and lse = -inf (so that a log-sum-exp merge ignores it).
//
// Documents (block-causal attention over packed rows, as FlashAttention's variable-length interface): with
// `documents`, key j is visible to query i only if it also lies at or after the start of i's document, so
// each query sees the keys [start(i), i]. Starts never decrease along a row, so a query block's visible keys
// begin at its first row's start: the forward begins its key loop there and the backward stops its query loop
// at the first query block whose documents all start after the key block. Blocks that no query can see are
// never computed; a row of many short documents costs about what those documents cost alone.

/// Shapes, positions and strides of one attention call. Tensors are row-major [batch, tokens, ...] with
/// head h at columns h*headDim ..< (h+1)*headDim of each token row, so q, k and v can live inside one
/// fused qkv buffer (row stride 3C) without copies.
public struct AttentionLayout: Sendable {
    public var batch: Int, heads: Int, headDim: Int
    /// Key/value heads (grouped-query attention); `heads` unless told, and a divisor of it.
    public var kvHeads: Int
    /// Query heads per key/value head.
    public var group: Int { heads / kvHeads }
    public var tq: Int, tk: Int
    public var qOffset: Int = 0, kOffset: Int = 0
    public var causal: Bool = true
    public var qRow: Int, kRow: Int, vRow: Int, oRow: Int
    public var qBatch: Int, kBatch: Int, vBatch: Int, oBatch: Int
    public var blockQ: Int = 64, blockK: Int = 64
    /// Where each position's document starts (block-causal attention; nil: a row is one sequence). Causal only.
    public var documents: DocumentStarts? = nil {
        didSet { precondition(documents == nil || causal, "attention: documents need causal attention") }
    }

    public var scale: Float { 1 / Float(headDim).squareRoot() }

    public init(batch: Int, heads: Int, headDim: Int, tq: Int, tk: Int, qOffset: Int = 0, kOffset: Int = 0,
                causal: Bool = true, qRow: Int, kRow: Int, vRow: Int, oRow: Int,
                qBatch: Int, kBatch: Int, vBatch: Int, oBatch: Int, blockQ: Int = 64, blockK: Int = 64, kvHeads: Int? = nil) {
        precondition(heads % (kvHeads ?? heads) == 0, "attention: \(kvHeads ?? heads) key/value heads do not divide \(heads) query heads")
        self.kvHeads = kvHeads ?? heads
        self.blockQ = blockQ; self.blockK = blockK
        self.batch = batch; self.heads = heads; self.headDim = headDim; self.tq = tq; self.tk = tk
        self.qOffset = qOffset; self.kOffset = kOffset; self.causal = causal
        self.qRow = qRow; self.kRow = kRow; self.vRow = vRow; self.oRow = oRow
        self.qBatch = qBatch; self.kBatch = kBatch; self.vBatch = vBatch; self.oBatch = oBatch
    }

    /// Self-attention over a fused qkv buffer [batch, t, (heads + 2·kvHeads)·headDim] (q, then k, then v: k
    /// starts at column heads·headDim, v at (heads + kvHeads)·headDim) with output [batch, t, heads·headDim].
    public static func fused(batch: Int, t: Int, heads: Int, headDim: Int, causal: Bool = true,
                             kvHeads: Int? = nil) -> AttentionLayout {
        let c = heads * headDim, row = c + 2 * (kvHeads ?? heads) * headDim
        return AttentionLayout(batch: batch, heads: heads, headDim: headDim, tq: t, tk: t, causal: causal,
                               qRow: row, kRow: row, vRow: row, oRow: c,
                               qBatch: t * row, kBatch: t * row, vBatch: t * row, oBatch: t * c, kvHeads: kvHeads)
    }

    /// Number of keys (from 0) that query row i may see.
    @inlinable func visibleKeys(_ i: Int) -> Int {
        causal ? max(0, min(tk, qOffset + i - kOffset + 1)) : tk
    }

    /// The documents cover this call's rows and positions.
    func checkDocuments() {
        guard let d = documents else { return }
        precondition(d.rows >= batch && d.length >= qOffset + tq && d.length >= kOffset + tk,
                     "attention: documents of \(d.rows) row(s) × \(d.length) positions do not cover \(batch) row(s), queries "
                     + "\(qOffset)..<\(qOffset + tq), keys \(kOffset)..<\(kOffset + tk)")
    }

    /// The first key (index in this call's keys) that query row i of batch row b may see: the start of its document.
    @inlinable func firstVisibleKey(_ b: Int, _ i: Int) -> Int {
        guard let d = documents else { return 0 }
        return Swift.max(0, d.start(b, qOffset + i) - kOffset)
    }

}

/// Called now and then by one worker while a kernel runs, so that communication in flight (ring
/// attention's next key/value block) keeps moving: this MPI progresses only inside MPI calls.
public protocol KernelProgress: AnyObject, Sendable {
    func poll()
}

public enum Attention {
    /// O [batch, tq, heads*hd] (strided by oRow/oBatch) and lse [batch, heads, tq] are written.
    public static func forward(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                               q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                               layout g: AttentionLayout, scratch: Scratch, progress: KernelProgress? = nil) {
        let bq = g.blockQ, bk = g.blockK, hd = g.headDim
        g.checkDocuments()
        let nqb = (g.tq + bq - 1) / bq
        let tasks = g.batch * g.heads * nqb
        let workers = min(Threads.count, max(tasks, 1))
        let per = bq * bk + bq * hd + 2 * bq
        let ws = SendPtr(scratch.floats(workers * per))
        let O = SendPtr(out), LSE = SendPtr(lse), Q = SendConstPtr(q), K = SendConstPtr(k), V = SendConstPtr(v)
        let scale = g.scale
        Threads.parallelTasks(tasks) { w, task in
            if w == 0 { progress?.poll() }
            // Heaviest (latest) query blocks first for causal balance.
            let qb = nqb - 1 - task % nqb
            let bh = task / nqb, h = bh % g.heads, b = bh / g.heads
            let s = ws.p + w * per, acc = s + bq * bk, m = acc + bq * hd, l = m + bq
            let q0 = qb * bq, nq = min(bq, g.tq - q0)
            let qp = Q.p + b * g.qBatch + q0 * g.qRow + h * hd
            let kp = K.p + b * g.kBatch + (h / g.group) * hd
            let vp = V.p + b * g.vBatch + (h / g.group) * hd
            for i in 0..<nq { m[i] = -.infinity; l[i] = 0 }
            acc.update(repeating: 0, count: nq * hd)
            let kLimit = g.visibleKeys(q0 + nq - 1)
            var k0 = g.firstVisibleKey(b, q0)
            while k0 < kLimit {
                let nk = min(bk, kLimit - k0)
                BLAS.sgemm(transA: false, transB: true, m: nq, n: nk, k: hd, alpha: scale, a: qp, lda: g.qRow,
                           b: kp + k0 * g.kRow, ldb: g.kRow, beta: 0, c: s, ldc: bk)
                for i in 0..<nq {
                    let row = s + i * bk
                    // Keys lo ..< hi of this block are visible to row i.
                    let lo = Swift.max(g.firstVisibleKey(b, q0 + i) - k0, 0), hi = min(nk, g.visibleKeys(q0 + i) - k0)
                    if hi <= lo { row.update(repeating: 0, count: nk); continue }
                    let mx = vmax(row + lo, hi - lo)
                    let mOld = m[i], mNew = Swift.max(mOld, mx)
                    let corr: Float = mOld == -.infinity ? 0 : Foundation.exp(mOld - mNew)
                    let sum = vexpShifted(row + lo, hi - lo, shift: mNew)
                    if lo > 0 { row.update(repeating: 0, count: lo) }
                    if hi < nk { (row + hi).update(repeating: 0, count: nk - hi) }
                    l[i] = l[i] * corr + sum
                    if corr != 1 { vscale(acc + i * hd, corr, hd) }
                    m[i] = mNew
                }
                BLAS.sgemm(transA: false, transB: false, m: nq, n: hd, k: nk, alpha: 1, a: s, lda: bk,
                           b: vp + k0 * g.vRow, ldb: g.vRow, beta: 1, c: acc, ldc: hd)
                k0 += bk
            }
            let op = O.p + b * g.oBatch + q0 * g.oRow + h * hd
            let lp = LSE.p + (b * g.heads + h) * g.tq + q0
            for i in 0..<nq {
                let o = op + i * g.oRow
                if l[i] > 0 {
                    let inv = 1 / l[i]
                    for d in 0..<hd { o[d] = acc[i * hd + d] * inv }
                    lp[i] = m[i] + Foundation.log(l[i])
                } else {
                    o.update(repeating: 0, count: hd)
                    lp[i] = -.infinity
                }
            }
        }
    }

    /// Most floats the backward's key-block splits hold for their own dQ (64 MiB).
    public static let splitBudget = 1 << 24

    /// Accumulates dq, dk, dv (same strides as q, k, v) from dout (strides of out), the saved output and lse.
    public static func backward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                out: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                                q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                layout g: AttentionLayout, scratch: Scratch, progress: KernelProgress? = nil) {
        let bq = g.blockQ, bk = g.blockK, hd = g.headDim
        g.checkDocuments()
        // One task per (batch row, key/value head); when there are fewer of those than threads (a batch of one
        // sequence, few key/value heads), each is split further by key blocks (split c takes blocks c, c + split, …,
        // interleaved for causal balance): its dK and dV stay disjoint, and its dQ goes to a buffer of its own,
        // added into dq in split order afterwards (the same sums whatever thread ran them).
        // The splits' own dQ (split × pairs × group·tq·hd floats) stay within splitBudget floats: no split when even
        // two would exceed it (the scratch would otherwise grow with the threads, unseen by the memory preflight).
        let pairs = g.batch * g.kvHeads, nkb = (g.tk + bk - 1) / bk, pairDQ = g.group * g.tq * hd
        let split = pairs >= Threads.count ? 1
            : Swift.max(1, Swift.min(Threads.count / Swift.max(pairs, 1), nkb, splitBudget / Swift.max(pairs * pairDQ, 1)))
        let tasks = pairs * split
        let workers = min(Threads.count, max(tasks, 1))
        let per = 2 * bq * bk + g.tq
        let ownDQ = split > 1 ? pairDQ : 0  // per task: its heads' dQ rows, [group, tq, hd]
        let ws = SendPtr(scratch.floats(workers * per + tasks * ownDQ))
        let dqs = SendPtr(ws.p + workers * per)
        let DQ = SendPtr(dq), DK = SendPtr(dk), DV = SendPtr(dv), DO = SendConstPtr(dout), O = SendConstPtr(out)
        let LSE = SendConstPtr(lse), Q = SendConstPtr(q), K = SendConstPtr(k), V = SendConstPtr(v)
        let scale = g.scale
        Threads.parallelTasks(tasks) { w, task in
            let pair = task / split, part = task % split
            let kvh = pair % g.kvHeads, b = pair / g.kvHeads
            if split > 1 { (dqs.p + task * ownDQ).update(repeating: 0, count: ownDQ) }
            for h in kvh * g.group ..< (kvh + 1) * g.group {
                let p = ws.p + w * per, dp = p + bq * bk, dsum = dp + bq * bk
                let qp = Q.p + b * g.qBatch + h * hd, kp = K.p + b * g.kBatch + kvh * hd, vp = V.p + b * g.vBatch + kvh * hd
                let dkp = DK.p + b * g.kBatch + kvh * hd, dvp = DV.p + b * g.vBatch + kvh * hd
                // dQ rows of head h: dq itself (row stride qRow), or this task's own buffer (row stride hd).
                let (dqp, dqRow) = split > 1 ? (dqs.p + task * ownDQ + (h - kvh * g.group) * g.tq * hd, hd)
                                             : (DQ.p + b * g.qBatch + h * hd, g.qRow)
                let dop = DO.p + b * g.oBatch + h * hd, op = O.p + b * g.oBatch + h * hd
                let lp = LSE.p + (b * g.heads + h) * g.tq
                for i in 0..<g.tq { dsum[i] = vdot(dop + i * g.oRow, op + i * g.oRow, hd) }
                var k0 = part * bk
                while k0 < g.tk {
                    if w == 0 { progress?.poll() }
                    let nk = min(bk, g.tk - k0)
                    // First query row that sees key k0 (causal), rounded down to a query block.
                    var qStart = g.causal ? Swift.max(0, g.kOffset + k0 - g.qOffset) : 0
                    qStart = (qStart / bq) * bq
                    var q0 = qStart
                    while q0 < g.tq {
                        // Documents: from here on every query's document starts after this key block.
                        if g.documents != nil && g.firstVisibleKey(b, q0) >= k0 + nk { break }
                        let nq = min(bq, g.tq - q0)
                        BLAS.sgemm(transA: false, transB: true, m: nq, n: nk, k: hd, alpha: scale, a: qp + q0 * g.qRow,
                                   lda: g.qRow, b: kp + k0 * g.kRow, ldb: g.kRow, beta: 0, c: p, ldc: bk)
                        for i in 0..<nq {
                            let row = p + i * bk
                            let lo = Swift.max(g.firstVisibleKey(b, q0 + i) - k0, 0), hi = min(nk, g.visibleKeys(q0 + i) - k0)
                            let li = lp[q0 + i]
                            if hi <= lo || li == -.infinity { row.update(repeating: 0, count: nk); continue }
                            _ = vexpShifted(row + lo, hi - lo, shift: li)
                            if lo > 0 { row.update(repeating: 0, count: lo) }
                            if hi < nk { (row + hi).update(repeating: 0, count: nk - hi) }
                        }
                        // dV[k] += Pᵀ dO
                        BLAS.sgemm(transA: true, transB: false, m: nk, n: hd, k: nq, alpha: 1, a: p, lda: bk,
                                   b: dop + q0 * g.oRow, ldb: g.oRow, beta: 1, c: dvp + k0 * g.vRow, ldc: g.vRow)
                        // dP = dO Vᵀ
                        BLAS.sgemm(transA: false, transB: true, m: nq, n: nk, k: hd, alpha: 1, a: dop + q0 * g.oRow,
                                   lda: g.oRow, b: vp + k0 * g.vRow, ldb: g.vRow, beta: 0, c: dp, ldc: bk)
                        // dS = P ∘ (dP - D), into p
                        for i in 0..<nq {
                            let row = p + i * bk, drow = dp + i * bk
                            let dv = F16(repeating: dsum[q0 + i])
                            var j = 0
                            while j + 16 <= nk { store16(row, j, load16(row, j) * (load16(drow, j) - dv)); j += 16 }
                            while j < nk { row[j] = row[j] * (drow[j] - dsum[q0 + i]); j += 1 }
                        }
                        // dQ += scale dS K;  dK += scale dSᵀ Q
                        BLAS.sgemm(transA: false, transB: false, m: nq, n: hd, k: nk, alpha: scale, a: p, lda: bk,
                                   b: kp + k0 * g.kRow, ldb: g.kRow, beta: 1, c: dqp + q0 * dqRow, ldc: dqRow)
                        BLAS.sgemm(transA: true, transB: false, m: nk, n: hd, k: nq, alpha: scale, a: p, lda: bk,
                                   b: qp + q0 * g.qRow, ldb: g.qRow, beta: 1, c: dkp + k0 * g.kRow, ldc: g.kRow)
                        q0 += bq
                    }
                    k0 += bk * split
                }
            }
        }
        guard split > 1 else { return }
        // dq += the splits' dQ, in split order, over the rows (b, h, i).
        let rows = g.batch * g.heads * g.tq
        Threads.parallelRanges(rows, grain: 64) { _, lo, hi in
            for r in lo..<hi {
                let i = r % g.tq, h = (r / g.tq) % g.heads, b = r / (g.tq * g.heads)
                let kvh = h / g.group, dst = DQ.p + b * g.qBatch + i * g.qRow + h * hd
                for part in 0..<split {
                    let src = dqs.p + ((b * g.kvHeads + kvh) * split + part) * ownDQ + ((h - kvh * g.group) * g.tq + i) * hd
                    vaxpy(1, src, dst, hd)
                }
            }
        }
    }
}
