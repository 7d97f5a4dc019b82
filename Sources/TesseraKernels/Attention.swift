import CKernels
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
// Layout: within a block the queries lie on the SIMD lanes (Qᵀ [hd, queries], scores Sᵀ [keys, queries]), so the
// online softmax, its masks and the per-query lse, max, sum and D are all lane-wise: no horizontal reductions and
// no per-row scalar work. On a CPU with AVX-512 (`BlockProduct.isa`) these lane-wise parts and the block products
// run on 16-lane registers in C (CKernels/attention_avx512.c: the same operations in the same order, the same bits).
// The block products (2 forward, 5 backward) run on `BlockProduct` (register-tiled,
// operands in place), not on the matrix library, whose packing of both operands and zeroing of C on every call
// took a fifth to a quarter of the kernel at these sizes (perf, Zen 3). The backward packs Qᵀ and dOᵀ a chunk of queries
// at a time (`chunkQueries`). Measured: bench/attention.sh (docs/benchmarks.md, "The attention kernel alone").
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
    /// Queries the backward packs at a time (rounded down to whole query blocks, at least one): bounds its scratch.
    public var chunkQueries: Int = 1024
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

    /// Whether some query of rows q0 ..< q0 + nq (batch row b) does not see all of keys k0 ..< k0 + nk: its
    /// scores need masking. Both bounds only grow along the rows, so the last row's first key and the first row's end decide.
    @inlinable func masksBlock(_ b: Int, queries q0: Int, _ nq: Int, keys k0: Int, _ nk: Int) -> Bool {
        k0 < firstVisibleKey(b, q0 + nq - 1) || k0 + nk > visibleKeys(q0)
    }

    /// The first key (index in this call's keys) that query row i of batch row b may see: the start of its document.
    @inlinable func firstVisibleKey(_ b: Int, _ i: Int) -> Int {
        guard let d = documents else { return 0 }
        return Swift.max(0, d.start(b, qOffset + i) - kOffset)
    }

}

/// The keys each query lane may see, lo ..< hi (indices in the call's keys), as Int32 in scratch floats, for `rows`
/// queries from q0 (a forward block, a backward chunk); lanes past them see every key (their results are never read).
struct VisibleRange {
    let lo: UnsafeMutablePointer<Float>, hi: UnsafeMutablePointer<Float>

    func fill(_ g: AttentionLayout, _ b: Int, _ q0: Int, _ rows: Int, _ lanes: Int) {
        for i in 0..<lanes {
            let first = i < rows ? g.firstVisibleKey(b, q0 + i) : 0, end = i < rows ? g.visibleKeys(q0 + i) : Int(Int32.max)
            UnsafeMutableRawPointer(lo + i).storeBytes(of: Int32(first), as: Int32.self)
            UnsafeMutableRawPointer(hi + i).storeBytes(of: Int32(end), as: Int32.self)
        }
    }

    @inline(__always) func lo16(_ c: Int) -> SIMD16<Int32> { UnsafeRawPointer(lo + c).loadUnaligned(as: SIMD16<Int32>.self) }
    @inline(__always) func hi16(_ c: Int) -> SIMD16<Int32> { UnsafeRawPointer(hi + c).loadUnaligned(as: SIMD16<Int32>.self) }
    /// The bounds from lane c on, as the AVX-512 kernels (CKernels) read them.
    @inline(__always) func lo32(_ c: Int) -> UnsafePointer<Int32> { UnsafeRawPointer(lo + c).assumingMemoryBound(to: Int32.self) }
    @inline(__always) func hi32(_ c: Int) -> UnsafePointer<Int32> { UnsafeRawPointer(hi + c).assumingMemoryBound(to: Int32.self) }
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
        // Per worker, queries on the lanes (a query block's rows padded to a multiple of 16): Qᵀ [hd, L], the scores or
        // probabilities Sᵀ [bk, L], the output accumulator Oᵀ [hd, L], the running max m and sum l, the visible key range.
        let lanes = (bq + 15) / 16 * 16
        let per = 2 * hd * lanes + bk * lanes + 4 * lanes
        let ws = SendPtr(scratch.floats(workers * per))
        let O = SendPtr(out), LSE = SendPtr(lse), Q = SendConstPtr(q), K = SendConstPtr(k), V = SendConstPtr(v)
        let scale = g.scale
        Threads.parallelTasks(tasks) { w, task in
            if w == 0 { progress?.poll() }
            // Heaviest (latest) query blocks first for causal balance.
            let qb = nqb - 1 - task % nqb
            let bh = task / nqb, h = bh % g.heads, b = bh / g.heads
            let q0 = qb * bq, nq = min(bq, g.tq - q0), L = (nq + 15) / 16 * 16
            let qt = ws.p + w * per, st = qt + hd * L, ot = st + bk * L, m = ot + hd * L, l = m + L
            let range = VisibleRange(lo: l + L, hi: l + 2 * L)
            let qp = Q.p + b * g.qBatch + q0 * g.qRow + h * hd
            let kp = K.p + b * g.kBatch + (h / g.group) * hd
            let vp = V.p + b * g.vBatch + (h / g.group) * hd
            for i in 0..<nq { for d in 0..<hd { qt[d * L + i] = scale * qp[i * g.qRow + d] } }
            for d in 0..<hd { (qt + d * L + nq).update(repeating: 0, count: L - nq) }
            ot.update(repeating: 0, count: hd * L)
            for i in 0..<L { m[i] = -.infinity; l[i] = 0 }
            range.fill(g, b, q0, nq, L)
            let kLimit = g.visibleKeys(q0 + nq - 1)
            var k0 = g.firstVisibleKey(b, q0)
            while k0 < kLimit {
                let nk = min(bk, kLimit - k0), masked = g.masksBlock(b, queries: q0, nq, keys: k0, nk)
                // Sᵀ = K Qᵀ (scaled), then the online softmax down each lane, then Oᵀ = Oᵀ·corr + Vᵀ P.
                BlockProduct.run(c: st, ldc: L, rows: nk, cols: L, depth: hd, a: kp + k0 * g.kRow, aRow: g.kRow, aCol: 1,
                                 b: qt, ldb: L, accumulate: false)
                if BlockProduct.wide {
                    tessera_online_softmax_avx512(st, nk, L, k0, masked ? 1 : 0, range.lo32(0), range.hi32(0), m, l, ot, hd)
                } else {
                    onlineSoftmax(st, keys: nk, lanes: L, k0: k0, masked: masked, range: range, m: m, l: l, acc: ot, hd: hd)
                }
                BlockProduct.run(c: ot, ldc: L, rows: hd, cols: L, depth: nk, a: vp + k0 * g.vRow, aRow: 1, aCol: g.vRow,
                                 b: st, ldb: L, accumulate: true)
                k0 += bk
            }
            let op = O.p + b * g.oBatch + q0 * g.oRow + h * hd
            let lp = LSE.p + (b * g.heads + h) * g.tq + q0
            for i in 0..<nq {
                let o = op + i * g.oRow
                if l[i] > 0 {
                    let inv = 1 / l[i]
                    for d in 0..<hd { o[d] = ot[d * L + i] * inv }
                    lp[i] = m[i] + Foundation.log(l[i])
                } else {
                    o.update(repeating: 0, count: hd)
                    lp[i] = -.infinity
                }
            }
        }
    }

    /// One key block of the forward's online softmax, queries on the lanes: s [keys, lanes] holds the scaled scores
    /// and gets the probabilities exp(s - m'), where m' = max(m, the block's column max over visible keys); l and
    /// the accumulator rows acc [hd, lanes] are rescaled by e^(m - m'). Invisible scores (with `masked`) become 0.
    @inline(__always)
    static func onlineSoftmax(_ s: UnsafeMutablePointer<Float>, keys: Int, lanes: Int, k0: Int, masked: Bool,
                              range: VisibleRange, m: UnsafeMutablePointer<Float>, l: UnsafeMutablePointer<Float>,
                              acc: UnsafeMutablePointer<Float>, hd: Int) {
        let ninf = F16(repeating: -.infinity)
        var c = 0
        while c < lanes {
            if masked { maskDown(s + c, keys: keys, stride: lanes, k0: k0, lo: range.lo16(c), hi: range.hi16(c)) }
            var mx = ninf
            for j in 0..<keys { let x = load16(s + j * lanes, c); mx.replace(with: x, where: x .> mx) }
            let mOld = load16(m, c)
            var mNew = mOld
            mNew.replace(with: mx, where: mx .> mNew)
            // A lane that has seen no key keeps m = -inf; shift by 0 there (its probabilities are 0).
            let shift = mNew.replacing(with: 0, where: mNew .== ninf)
            // Lanes that had seen no key (mOld = -inf) have l = 0 and acc = 0: any factor does, 1 skips the rescale.
            let corr = vexp(mOld - shift).replacing(with: 1, where: mOld .== ninf)
            let sum = expDown(s + c, keys: keys, stride: lanes, shift: shift, masked: masked)
            store16(l, c, load16(l, c) * corr + sum)
            store16(m, c, mNew)
            if corr != F16(repeating: 1) {
                for d in 0..<hd { store16(acc + d * lanes, c, load16(acc + d * lanes, c) * corr) }
            }
            c += 16
        }
    }

    /// x = exp(x - shift) down 16 lanes of `keys` rows (row stride `stride`), -inf (masked) to exactly 0; returns the
    /// column sums. Its own function so that `vexp` is inlined in its loop (the compiler does not inline it into larger
    /// callers: a call per 16 values, measured in perf).
    @inline(never)
    static func expDown(_ s: UnsafeMutablePointer<Float>, keys: Int, stride: Int, shift: F16, masked: Bool) -> F16 {
        var sum = F16()
        for j in 0..<keys {
            let x = load16(s + j * stride, 0)
            var p = vexp(x - shift)
            if masked { p.replace(with: 0, where: x .== F16(repeating: -.infinity)) }
            store16(s + j * stride, 0, p)
            sum += p
        }
        return sum
    }

    /// Scores of keys k0 + j (row j, stride `stride`) that a lane does not see (outside lo ..< hi) become -inf.
    @inline(__always)
    static func maskDown(_ s: UnsafeMutablePointer<Float>, keys: Int, stride: Int, k0: Int, lo: SIMD16<Int32>, hi: SIMD16<Int32>) {
        for j in 0..<keys {
            let key = SIMD16<Int32>(repeating: Int32(k0 + j))
            var x = load16(s + j * stride, 0)
            x.replace(with: -.infinity, where: .!((key .>= lo) .& (key .< hi)))
            store16(s + j * stride, 0, x)
        }
    }

    /// ds = scale · p ∘ (ds - d) down 16 lanes of `keys` rows: the score gradient from dP (in ds), P and D per lane.
    @inline(__always)
    static func scoreGradientDown(_ ds: UnsafeMutablePointer<Float>, _ p: UnsafeMutablePointer<Float>, keys: Int, stride: Int,
                                  d: F16, scale: Float) {
        for j in 0..<keys {
            let o = j * stride
            store16(ds + o, 0, scale * load16(p + o, 0) * (load16(ds + o, 0) - d))
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
        // Per worker, a chunk of the head's queries in turn, on the lanes: Qᵀ (scaled) and dOᵀ [hd, cPad], and per
        // query its lse, D = rowsum(dO ∘ O) and visible keys (cPad: room for the last block's lanes); then P and dS
        // blocks [bk, lanes]. A chunk (whole query blocks, about `chunkQueries` queries) is packed once and read by
        // every key block, so the scratch stays bounded whatever the sequence length. Each key block still meets its
        // query blocks in ascending order, and each query block its key blocks: the same sums as without chunks.
        let lanes = (bq + 15) / 16 * 16, chunk = Swift.max(1, g.chunkQueries / bq) * bq
        let cPad = (Swift.min(chunk, g.tq) + 30) / 16 * 16  // ≥ the chunk + 15, a multiple of 16 (aligned rows)
        let per = 2 * hd * cPad + 4 * cPad + 2 * bk * lanes
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
            let qt = ws.p + w * per, dot = qt + hd * cPad, lsel = dot + hd * cPad, dl = lsel + cPad
            let range = VisibleRange(lo: dl + cPad, hi: dl + 2 * cPad)
            let pt = dl + 3 * cPad, dst = pt + bk * lanes
            for h in kvh * g.group ..< (kvh + 1) * g.group {
                let qp = Q.p + b * g.qBatch + h * hd, kp = K.p + b * g.kBatch + kvh * hd, vp = V.p + b * g.vBatch + kvh * hd
                let dkp = DK.p + b * g.kBatch + kvh * hd, dvp = DV.p + b * g.vBatch + kvh * hd
                // dQ rows of head h: dq itself (row stride qRow), or this task's own buffer (row stride hd).
                let (dqp, dqRow) = split > 1 ? (dqs.p + task * ownDQ + (h - kvh * g.group) * g.tq * hd, hd)
                                             : (DQ.p + b * g.qBatch + h * hd, g.qRow)
                let dop = DO.p + b * g.oBatch + h * hd, op = O.p + b * g.oBatch + h * hd
                let lp = LSE.p + (b * g.heads + h) * g.tq
                var c0 = 0
                while c0 < g.tq {
                    let cn = Swift.min(chunk, g.tq - c0)
                    for i in 0..<cn {
                        let r = c0 + i
                        for d in 0..<hd { qt[d * cPad + i] = scale * qp[r * g.qRow + d]; dot[d * cPad + i] = dop[r * g.oRow + d] }
                        lsel[i] = lp[r]
                        dl[i] = vdot(dop + r * g.oRow, op + r * g.oRow, hd)
                    }
                    for d in 0..<hd {
                        (qt + d * cPad + cn).update(repeating: 0, count: cPad - cn)
                        (dot + d * cPad + cn).update(repeating: 0, count: cPad - cn)
                    }
                    (lsel + cn).update(repeating: 0, count: cPad - cn); (dl + cn).update(repeating: 0, count: cPad - cn)
                    range.fill(g, b, c0, cn, cPad)
                    // Keys past what the chunk's last query sees (causal) are skipped.
                    let kEnd = g.causal ? g.visibleKeys(c0 + cn - 1) : g.tk
                    var k0 = part * bk
                    while k0 < kEnd {
                        if w == 0 { progress?.poll() }
                        let nk = min(bk, g.tk - k0)
                        // First query row that sees key k0 (causal), rounded down to a query block.
                        var qStart = g.causal ? Swift.max(0, g.kOffset + k0 - g.qOffset) : 0
                        qStart = Swift.max((qStart / bq) * bq, c0)
                        var q0 = qStart
                        while q0 < c0 + cn {
                            // Documents: from here on every query's document starts after this key block.
                            if g.documents != nil && g.firstVisibleKey(b, q0) >= k0 + nk { break }
                            let nq = min(bq, g.tq - q0), L = (nq + 15) / 16 * 16
                            let masked = g.masksBlock(b, queries: q0, nq, keys: k0, nk)
                            // Pᵀ = exp(K Qᵀ - lse), invisible keys 0
                            BlockProduct.run(c: pt, ldc: L, rows: nk, cols: L, depth: hd, a: kp + k0 * g.kRow, aRow: g.kRow, aCol: 1,
                                             b: qt + (q0 - c0), ldb: cPad, accumulate: false)
                            if BlockProduct.wide {
                                tessera_probabilities_avx512(pt, nk, L, k0, masked ? 1 : 0, range.lo32(q0 - c0), range.hi32(q0 - c0), lsel + (q0 - c0))
                            } else {
                                var c = 0
                                while c < L {
                                    if masked { maskDown(pt + c, keys: nk, stride: L, k0: k0, lo: range.lo16(q0 - c0 + c), hi: range.hi16(q0 - c0 + c)) }
                                    _ = expDown(pt + c, keys: nk, stride: L, shift: load16(lsel, q0 - c0 + c), masked: masked)
                                    c += 16
                                }
                            }
                            // dPᵀ = V dOᵀ, then dSᵀ = scale · Pᵀ ∘ (dPᵀ - D), into dst
                            BlockProduct.run(c: dst, ldc: L, rows: nk, cols: L, depth: hd, a: vp + k0 * g.vRow, aRow: g.vRow, aCol: 1,
                                             b: dot + (q0 - c0), ldb: cPad, accumulate: false)
                            if BlockProduct.wide {
                                tessera_score_gradient_avx512(dst, pt, nk, L, dl + (q0 - c0), scale)
                            } else {
                                var c = 0
                                while c < L {
                                    scoreGradientDown(dst + c, pt + c, keys: nk, stride: L, d: load16(dl, q0 - c0 + c), scale: scale)
                                    c += 16
                                }
                            }
                            // dV += Pᵀ dO;  dQ += dS K;  dK += dSᵀ Q (dS carries the scale)
                            BlockProduct.run(c: dvp + k0 * g.vRow, ldc: g.vRow, rows: nk, cols: hd, depth: nq, a: pt, aRow: L, aCol: 1,
                                             b: dop + q0 * g.oRow, ldb: g.oRow, accumulate: true)
                            BlockProduct.run(c: dqp + q0 * dqRow, ldc: dqRow, rows: nq, cols: hd, depth: nk, a: dst, aRow: 1, aCol: L,
                                             b: kp + k0 * g.kRow, ldb: g.kRow, accumulate: true)
                            BlockProduct.run(c: dkp + k0 * g.kRow, ldc: g.kRow, rows: nk, cols: hd, depth: nq, a: dst, aRow: L, aCol: 1,
                                             b: qp + q0 * g.qRow, ldb: g.qRow, accumulate: true)
                            q0 += bq
                        }
                        k0 += bk * split
                    }
                    c0 += chunk
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
