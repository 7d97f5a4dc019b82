// bfloat16: the upper 16 bits of an IEEE float32 (sign, the 8-bit exponent, 7 stored mantissa bits), kept
// as raw `UInt16`s. Mixed precision stores activations and weight copies in it and widens back to float32
// for arithmetic; converting is the only thing this file does. Narrowing rounds to nearest, ties to even
// (as PyTorch and oneDNN do), keeps infinities, and keeps a NaN a quiet NaN; widening is exact.

public enum BF16 {
    /// The bit pattern of the float32 nearest to `b` whose low 16 bits are zero (ties to even); a NaN stays
    /// a NaN, made quiet. Every conversion below is this.
    @inline(__always) static func roundedBits(_ b: UInt32) -> UInt32 {
        (b & 0x7FFF_FFFF) > 0x7F80_0000 ? (b & 0xFFFF_0000) | 0x0040_0000 : (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000
    }

    /// The bf16 nearest to x (ties to even mantissa); a NaN becomes a quiet NaN with x's sign.
    @inline(__always) public static func from(_ x: Float) -> UInt16 {
        UInt16(truncatingIfNeeded: roundedBits(x.bitPattern) >> 16)
    }

    /// The float32 a bf16 stands for (exact).
    @inline(__always) public static func float(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    // The loops below are plain scalar code on the bit patterns, which the compiler vectorises (AVX2: eight
    // lanes). Written with SIMD16 vectors and masks they ran 10–20× slower (measured: 7.6 against 0.38 ns per
    // element for the in-place rounding).

    /// Narrows n floats to bf16.
    public static func narrow(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        src.withMemoryRebound(to: UInt32.self, capacity: n) { q in
            for i in 0..<n { dst[i] = UInt16(truncatingIfNeeded: roundedBits(q[i]) >> 16) }
        }
    }

    /// Widens n bf16 values to float32.
    public static func widen(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count n: Int) {
        dst.withMemoryRebound(to: UInt32.self, capacity: n) { q in
            for i in 0..<n { q[i] = UInt32(src[i]) << 16 }
        }
    }
}

extension BF16 {
    /// Writes to `dst` the n floats of `src` rounded to the nearest bf16 value (kept in float32 storage);
    /// `dst` is `src` or does not overlap it. The result widens exactly from the bf16 that `from` gives.
    public static func round(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count n: Int) {
        // In place through one pointer: with two that may alias, the compiler does not vectorise the loop
        // (measured: the rounding of a bf16 step at M took 96 ms that way, 29 ms this way).
        if UnsafePointer(dst) == src {
            dst.withMemoryRebound(to: UInt32.self, capacity: n) { q in for i in 0..<n { q[i] = roundedBits(q[i]) } }
            return
        }
        src.withMemoryRebound(to: UInt32.self, capacity: n) { s in
            dst.withMemoryRebound(to: UInt32.self, capacity: n) { d in
                for i in 0..<n { d[i] = roundedBits(s[i]) }
            }
        }
    }

    /// Rounds n floats in place.
    public static func round(_ p: UnsafeMutablePointer<Float>, count n: Int) { round(p, into: p, count: n) }

    /// `narrow(_:into:count:)` split over the kernel threads (for weight-sized tensors).
    public static func narrowParallel(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        let S = SendConstPtr(src), D = SendPtr16(dst)
        inParallel(n) { i, k in narrow(S.p + i, into: D.p + i, count: k) }
    }

    /// `round(_:into:count:)` split over the kernel threads (for activation-sized tensors).
    public static func roundParallel(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count n: Int) {
        let S = SendConstPtr(src), D = SendPtr(dst)
        inParallel(n) { i, k in round(S.p + i, into: D.p + i, count: k) }
    }

    /// `body(first, count)` over n elements: in one call when small, else in ranges of whole 16s over the kernel threads.
    private static func inParallel(_ n: Int, _ body: (Int, Int) -> Void) {
        if n < 32_768 || Threads.count == 1 { body(0, n); return }
        Threads.parallelRanges(n / 16, grain: 1024) { _, lo, hi in
            let end = hi == n / 16 ? n : hi * 16  // the last range takes the tail
            body(lo * 16, end - lo * 16)
        }
    }
}

extension BF16 {
    /// Values converted per pass of the in-place conversions: their `scratch` holds 4 × this many bytes.
    public static let inPlaceChunk = 2048

    /// Narrows n floats in place: afterwards the first 2n bytes at `p` hold their bf16s (the floats must
    /// be bf16 values already for this to be lossless). Goes forward in chunks through a small buffer, so no
    /// write lands on a float not yet read.
    public static func narrowInPlace(_ p: UnsafeMutableRawPointer, count n: Int, scratch: UnsafeMutableRawPointer) {
        let tmp = scratch.bindMemory(to: Float.self, capacity: inPlaceChunk)
        var i = 0
        while i < n {
            let k = min(inPlaceChunk, n - i)
            (p + 4 * i).withMemoryRebound(to: Float.self, capacity: k) { tmp.update(from: $0, count: k) }
            (p + 2 * i).withMemoryRebound(to: UInt16.self, capacity: k) { narrow(tmp, into: $0, count: k) }
            i += k
        }
    }

    /// The inverse of `narrowInPlace`: the n bf16s in the first 2n bytes at `p` become n floats. Goes backward
    /// in chunks through a small buffer, so no write lands on a bf16 not yet read.
    public static func widenInPlace(_ p: UnsafeMutableRawPointer, count n: Int, scratch: UnsafeMutableRawPointer) {
        let tmp = scratch.bindMemory(to: UInt16.self, capacity: inPlaceChunk)
        var end = n
        while end > 0 {
            let k = min(inPlaceChunk, end), i = end - k
            (p + 2 * i).withMemoryRebound(to: UInt16.self, capacity: k) { tmp.update(from: $0, count: k) }
            (p + 4 * i).withMemoryRebound(to: Float.self, capacity: k) { widen(tmp, into: $0, count: k) }
            end = i
        }
    }
}
