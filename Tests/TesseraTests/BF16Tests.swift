import XCTest
@testable import TesseraKernels

/// bf16 conversion against its definition: the nearest of the two bf16 neighbours of x (measured in float64),
/// ties to the even mantissa; infinities kept, NaN quiet, widening exact; the SIMD paths equal the scalar
/// one on random bit patterns (every exponent, specials included) and on lengths that leave a tail.
final class BF16Tests: XCTestCase {
    /// The definition, independent of the bit trick: candidates below and above x, compared in float64.
    func reference(_ x: Float) -> UInt16 {
        let bits = x.bitPattern, down = UInt16(truncatingIfNeeded: bits >> 16)
        if bits & 0xFFFF == 0 { return down }
        let up = down &+ 1   // next bf16 away from zero (carries into the exponent, up to infinity)
        // Past the largest finite bf16 the next one is infinity, which IEEE rounding treats as 2^128.
        let lo = Double(BF16.float(down)), v = Double(x)
        let hi = up & 0x7FFF == 0x7F80 ? (x < 0 ? -0x1p128 : 0x1p128) : Double(BF16.float(up))
        let dLo = abs(v - lo), dHi = abs(hi - v)
        if dLo < dHi { return down }
        if dHi < dLo { return up }
        return down & 1 == 0 ? down : up
    }

    func testNarrowingRoundsToNearestEven() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200_000 {
            let x = Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))
            guard x.isFinite else { continue }
            XCTAssertEqual(BF16.from(x), reference(x), "\(x) bits \(String(x.bitPattern, radix: 16))")
        }
        // Ties: exactly halfway goes to the even neighbour, both ways.
        XCTAssertEqual(BF16.from(Float(bitPattern: 0x3F80_8000)), 0x3F80)   // 1 + 2^-8: tie, 0x3F80 even
        XCTAssertEqual(BF16.from(Float(bitPattern: 0x3F81_8000)), 0x3F82)   // tie, 0x3F81 odd → up
        XCTAssertEqual(BF16.from(Float(bitPattern: 0x3F80_8001)), 0x3F81)   // just above the tie
        // The largest finite float rounds to infinity; infinities and zeros keep their sign.
        XCTAssertEqual(BF16.from(.greatestFiniteMagnitude), 0x7F80)
        XCTAssertEqual(BF16.from(-.infinity), 0xFF80)
        XCTAssertEqual(BF16.from(-0.0), 0x8000)
        // NaN stays a quiet NaN (a signalling payload must not round into infinity).
        let signalling = Float(bitPattern: 0x7F80_0001)
        XCTAssertTrue(BF16.float(BF16.from(signalling)).isNaN)
        XCTAssertTrue(BF16.float(BF16.from(.nan)).isNaN)
        XCTAssertEqual(BF16.from(Float(bitPattern: 0xFFC0_0000)) & 0x8000, 0x8000, "NaN keeps its sign")
    }

    func testWideningIsExactAndRoundTrips() {
        for h in UInt16.min...UInt16.max {
            let x = BF16.float(h)
            XCTAssertEqual(x.bitPattern, UInt32(h) << 16)
            if !x.isNaN { XCTAssertEqual(BF16.from(x), h) }
        }
    }

    func testSIMDPathsEqualTheScalarOnes() {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 15, 16, 17, 33, 1000, 4099] {
            var x = (0..<n).map { _ in Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)) }
            if n > 3 { x[0] = .nan; x[1] = .infinity; x[2] = -0.0 }
            var h = [UInt16](repeating: 0, count: n), back = [Float](repeating: 0, count: n)
            BF16.narrow(x, into: &h, count: n)
            XCTAssertEqual(h, x.map(BF16.from), "narrow, n = \(n)")
            BF16.widen(h, into: &back, count: n)
            XCTAssertEqual(back.map(\.bitPattern), h.map(BF16.float).map(\.bitPattern), "widen, n = \(n)")
        }
    }

    /// The in-place conversions the offload tier packs blocks with: narrowing then widening gives back every
    /// bf16 value bit for bit (NaNs quiet), over lengths around and across the chunk size, and narrowing leaves the bf16s
    /// in the first 2n bytes.
    func testInPlaceNarrowAndWidenRoundTrip() {
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: 4 * BF16.inPlaceChunk, alignment: 64)
        defer { scratch.deallocate() }
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 7, BF16.inPlaceChunk - 1, BF16.inPlaceChunk, BF16.inPlaceChunk + 1, 3 * BF16.inPlaceChunk + 5] {
            let x = (0..<n).map { _ in BF16.float(UInt16.random(in: 0...UInt16.max, using: &rng)) }
            var buf = x
            buf.withUnsafeMutableBytes { BF16.narrowInPlace($0.baseAddress!, count: n, scratch: scratch) }
            let halves = buf.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self).prefix(n)) }
            XCTAssertEqual(halves, x.map { BF16.from($0) }, "narrowInPlace, n = \(n)")
            buf.withUnsafeMutableBytes { BF16.widenInPlace($0.baseAddress!, count: n, scratch: scratch) }
            // Every bf16 value comes back; a signalling NaN comes back quiet (narrowing keeps NaNs quiet).
            XCTAssertEqual(buf.map(\.bitPattern), x.map { BF16.float(BF16.from($0)).bitPattern }, "round trip, n = \(n)")
            XCTAssertEqual(zip(buf, x).filter { !$1.isNaN && $0.bitPattern != $1.bitPattern }.count, 0, "n = \(n)")
        }
    }
}
