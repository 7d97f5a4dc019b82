// Token + position embedding.   x[n, :] = wte[tokens[n], :] + wpe[positions[n], :]   (GPT-2)
// Token embedding alone.         x[n, :] = wte[tokens[n], :]                         (Llama: RoPE places tokens)
// Positions are explicit so that sequence-parallel layouts (contiguous or zigzag chunks) pass the
// global position of every local token.

public enum Embedding {
    /// out [N, C]; tokens, positions [N]; wte [V, C]; wpe [P, C].
    public static func forward(out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>,
                               positions: UnsafePointer<Int32>, wte: UnsafePointer<Float>,
                               wpe: UnsafePointer<Float>, n: Int, c: Int) {
        let O = SendPtr(out), T = SendConstPtr(tokens), P = SendConstPtr(positions)
        let E = SendConstPtr(wte), Q = SendConstPtr(wpe)
        Threads.parallelRanges(n, grain: 8) { _, lo, hi in
            for i in lo..<hi {
                let o = O.p + i * c, e = E.p + Int(T.p[i]) * c, q = Q.p + Int(P.p[i]) * c
                var j = 0
                while j + 16 <= c { store16(o, j, load16(e, j) + load16(q, j)); j += 16 }
                while j < c { o[j] = e[j] + q[j]; j += 1 }
            }
        }
    }

    /// dwte[tokens[n]] += dout[n]; dwpe[positions[n]] += dout[n]. Sequential over rows: rows can share a
    /// token id, and a fixed order keeps runs bit-identical; split over channels for threads.
    public static func backward(dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
                                dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
                                positions: UnsafePointer<Int32>, n: Int, c: Int) {
        let DE = SendPtr(dwte), DP = SendPtr(dwpe), D = SendConstPtr(dout)
        let T = SendConstPtr(tokens), P = SendConstPtr(positions)
        Threads.parallelRanges(c, grain: 16) { _, lo, hi in
            for i in 0..<n {
                let d = D.p + i * c
                vaxpy(1, d + lo, DE.p + Int(T.p[i]) * c + lo, hi - lo)
                vaxpy(1, d + lo, DP.p + Int(P.p[i]) * c + lo, hi - lo)
            }
        }
    }

    /// out [N, C] = wte[tokens[n]]; wte [V, C].
    public static func lookup(out: UnsafeMutablePointer<Float>, tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, n: Int, c: Int) {
        let O = SendPtr(out), T = SendConstPtr(tokens), E = SendConstPtr(wte)
        Threads.parallelRanges(n, grain: 8) { _, lo, hi in
            for i in lo..<hi { (O.p + i * c).update(from: E.p + Int(T.p[i]) * c, count: c) }
        }
    }

    /// dwte[tokens[n]] += dout[n], in row order (as `backward`).
    public static func lookupBackward(dwte: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
                                      n: Int, c: Int) {
        let DE = SendPtr(dwte), D = SendConstPtr(dout), T = SendConstPtr(tokens)
        Threads.parallelRanges(c, grain: 16) { _, lo, hi in
            for i in 0..<n { vaxpy(1, D.p + i * c + lo, DE.p + Int(T.p[i]) * c + lo, hi - lo) }
        }
    }
}
