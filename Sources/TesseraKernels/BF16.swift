// bfloat16: the upper 16 bits of an IEEE float32 (sign, the 8-bit exponent, 7 stored mantissa bits), kept
// as raw `UInt16`s. Mixed precision stores activations and weight copies in it and widens back to float32
// for arithmetic; converting is the only thing this file does. Narrowing rounds to nearest, ties to even
// (as PyTorch and oneDNN do), keeps infinities, and keeps a NaN a quiet NaN; widening is exact.

public enum BF16 {
    /// The bf16 nearest to x (ties to even mantissa); a NaN becomes a quiet NaN with x's sign.
    @inline(__always) public static func from(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if bits & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
    }

    /// The float32 a bf16 stands for (exact).
    @inline(__always) public static func float(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    /// Narrows n floats to bf16, sixteen at a time.
    public static func narrow(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, count n: Int) {
        typealias U32 = SIMD16<UInt32>
        var i = 0
        while i + 16 <= n {
            let bits = UnsafeRawPointer(src + i).loadUnaligned(as: U32.self)
            let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
            let quiet = (bits &>> 16) | 0x0040
            let out = rounded.replacing(with: quiet, where: (bits & 0x7FFF_FFFF) .> 0x7F80_0000)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: out), as: SIMD16<UInt16>.self)
            i += 16
        }
        while i < n { dst[i] = from(src[i]); i += 1 }
    }

    /// Widens n bf16 values to float32, sixteen at a time.
    public static func widen(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, count n: Int) {
        var i = 0
        while i + 16 <= n {
            let h = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<UInt16>.self)
            let bits = SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16
            UnsafeMutableRawPointer(dst + i).storeBytes(of: bits, as: SIMD16<UInt32>.self)
            i += 16
        }
        while i < n { dst[i] = float(src[i]); i += 1 }
    }
}
