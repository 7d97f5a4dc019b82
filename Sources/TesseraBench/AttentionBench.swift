// `tessera bench --attention`: the blockwise attention kernel alone, forward and backward, at each size's
// shape (batch, sequence, heads, head dimension), best of several calls. The FLOPs counted are the products'
// on the causal half: forward 2 products (QKᵀ, PV), backward 5 (QKᵀ recomputed, PᵀdO, dO·Vᵀ, dS·K, dSᵀQ),
// each 2·T²/2·hd per (batch, head). Against the sgemm ceiling of the same run.

import Foundation
import TesseraKernels
import TesseraTraining

public enum AttentionBench {
    public struct Row: Sendable {
        public let size: String, forwardSeconds: Double, backwardSeconds: Double
        public let forwardFlops: Double, backwardFlops: Double
    }

    /// `documentLength`: rows packed with documents of that many tokens (the last one shorter), block-causal.
    public static func measure(_ s: BenchSize, threads: Int, reps: Int = 7, documentLength: Int? = nil) -> Row {
        Threads.configure(threads)
        let m = s.model, hd = m.headDim, c = s.d, w = m.qkvWidth, n = s.batch * s.seq
        let kOff = c, vOff = c + m.nKVHead * hd
        var g = AttentionLayout.fused(batch: s.batch, t: s.seq, heads: s.heads, headDim: hd, kvHeads: m.nKVHead)
        if let d = documentLength {
            let row = Array(repeating: d, count: s.seq / d) + (s.seq % d > 0 ? [s.seq % d] : [])
            g.documents = DocumentStarts(lengths: Array(repeating: row, count: s.batch), length: s.seq)
        }
        var rng = SplitMix64(seed: 7)
        let qkv = FloatBuffer(n * w), dout = FloatBuffer(n * c)
        for i in 0..<(n * w) { qkv.ptr[i] = Float(rng.nextDouble()) - 0.5 }
        for i in 0..<(n * c) { dout.ptr[i] = Float(rng.nextDouble()) - 0.5 }
        let out = FloatBuffer(n * c), lse = FloatBuffer(s.batch * s.heads * s.seq), dqkv = FloatBuffer(n * w)
        let scratch = Scratch()
        var fwd = Double.infinity, bwd = Double.infinity
        for _ in 0..<reps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            Attention.forward(out: out.ptr, lse: lse.ptr, q: qkv.ptr, k: qkv.ptr + kOff, v: qkv.ptr + vOff, layout: g, scratch: scratch)
            let t1 = DispatchTime.now().uptimeNanoseconds
            Attention.backward(dq: dqkv.ptr, dk: dqkv.ptr + kOff, dv: dqkv.ptr + vOff, dout: dout.ptr, out: out.ptr, lse: lse.ptr,
                               q: qkv.ptr, k: qkv.ptr + kOff, v: qkv.ptr + vOff, layout: g, scratch: scratch)
            let t2 = DispatchTime.now().uptimeNanoseconds
            fwd = min(fwd, Double(t1 - t0) / 1e9); bwd = min(bwd, Double(t2 - t1) / 1e9)
        }
        let product = 2 * Double(s.batch * s.heads) * Double(s.seq * s.seq) / 2 * Double(hd)
        return Row(size: s.name, forwardSeconds: fwd, backwardSeconds: bwd, forwardFlops: 2 * product, backwardFlops: 5 * product)
    }

    /// Packed rows against whole causal rows at each size's shape: time per forward + backward, and the ratio against
    /// the work ratio (Σ over documents of d² against T², the visible score entries); with `json`, one line per size
    /// (`"bench": "attention_documents"`).
    public static func documentsReport(sizes: [BenchSize], length: Int, threads: Int, json: Bool = false) -> [String] {
        var out = ["", "attention kernel on rows packed with documents of \(length) tokens against whole causal rows (best of 7 calls):",
                   "size     shape                 causal ms   packed ms   packed/causal   visible work ratio"]
        var lines: [String] = []
        for s in sizes {
            let whole = measure(s, threads: threads), packed = measure(s, threads: threads, documentLength: length)
            let a = whole.forwardSeconds + whole.backwardSeconds, b = packed.forwardSeconds + packed.backwardSeconds
            let docs = Array(repeating: length, count: s.seq / length) + (s.seq % length > 0 ? [s.seq % length] : [])
            let visible = docs.reduce(0.0) { $0 + Double($1) * Double($1 + 1) / 2 } / (Double(s.seq) * Double(s.seq + 1) / 2)
            out.append(BenchScaffold.cell(s.name, 9) + BenchScaffold.cell("\(s.batch)×\(s.seq), \(s.heads)×\(s.d / s.heads)", 22)
                       + BenchScaffold.cell(fmt(1000 * a, 1), 12) + BenchScaffold.cell(fmt(1000 * b, 1), 12)
                       + BenchScaffold.cell(fmt(b / a, 3), 16) + fmt(visible, 3))
            lines.append(BenchScaffold.jsonLine(["bench": "attention_documents", "size": s.name, "threads": threads, "length": length,
                                                 "causal_s": a, "packed_s": b, "visible_ratio": visible]))
        }
        return out + (json ? lines : [])
    }

    /// The table: per size, forward and backward time, GFLOP/s and share of the ceiling.
    public static func report(_ rows: [Row], ceiling: Double) -> [String] {
        var out = ["", "attention kernel alone (causal; products' FLOPs on the visible half; best of 7 calls; % of the ceiling above):",
                   "size     shape                 forward ms  GFLOP/s  of ceiling   backward ms  GFLOP/s  of ceiling"]
        for r in rows {
            let s = BenchSize.all.first { $0.name == r.size }!
            let f = r.forwardFlops / r.forwardSeconds, b = r.backwardFlops / r.backwardSeconds
            out.append(BenchScaffold.cell(r.size, 9) + BenchScaffold.cell("\(s.batch)×\(s.seq), \(s.heads)×\(s.d / s.heads)", 22)
                       + BenchScaffold.cell(fmt(1000 * r.forwardSeconds, 1), 12) + BenchScaffold.cell(fmt(f / 1e9, 1), 9)
                       + BenchScaffold.cell(fmt(100 * f / ceiling, 0) + "%", 13)
                       + BenchScaffold.cell(fmt(1000 * r.backwardSeconds, 1), 13) + BenchScaffold.cell(fmt(b / 1e9, 1), 9)
                       + fmt(100 * b / ceiling, 0) + "%")
        }
        return out
    }
}
