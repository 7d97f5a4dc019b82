// Residual add.  forward: out = a + b.  backward: da += dout, db += dout (the caller passes the same
// gradient on to both branches, so in the model the backward is an accumulation into the stream).

public enum Residual {
    public static func forward(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>,
                               b: UnsafePointer<Float>, n: Int) {
        let O = SendPtr(out), A = SendConstPtr(a), B = SendConstPtr(b)
        Threads.parallelRanges(n, grain: 4096) { _, lo, hi in
            var i = lo
            while i + 16 <= hi { store16(O.p, i, load16(A.p, i) + load16(B.p, i)); i += 16 }
            while i < hi { O.p[i] = A.p[i] + B.p[i]; i += 1 }
        }
    }

    /// dst += src
    public static func backward(accumulate dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, n: Int) {
        let D = SendPtr(dst), S = SendConstPtr(src)
        Threads.parallelRanges(n, grain: 4096) { _, lo, hi in vaxpy(1, S.p + lo, D.p + lo, hi - lo) }
    }
}
