// The block products of the attention kernel, without a matrix library:
//   C[r, 0 ..< cols] (+)= Σ_{x < depth} A(r, x) · B[x, 0 ..< cols]
// with A read element by element through two strides (so either operand order of a block, or its transpose, needs
// no copy) and B and C row by row. At attention's sizes (64 × 64 blocks, depth 32 or 64) OpenBLAS spends a large
// part of each call packing both operands and zeroing C (measured with perf on Zen 3: its copies and beta pass
// 18–20% of the kernel against 52% in its inner kernel); here the operands stay where they are, in L1.
//
// Register tile: 6 rows × 16 columns (twelve 8-lane accumulators, 2 vector loads of B and 6 broadcasts of A per
// 12 fused multiply-adds: within the 16 vector registers of AVX2, and enough independent sums to cover the FMA
// latency), then tiles of 4 rows, then single rows; in each, columns go by 16, then by 8, then one by one.

// On a CPU with AVX-512 the product runs on 16-lane registers instead (CKernels/block_product_avx512.c, the
// same algorithm in C: Swift cannot compile one function for an instruction set the build does not target), and
// so do the attention kernel's lane-wise parts (Attention.swift); `BlockProduct.isa` says which, and
// TESSERA_ATTENTION_ISA=avx2 keeps the 8-lane Swift code (for measuring one against the other). Every output
// element is the same sum of fused multiply-adds in the same order either way: the same bits.

import CKernels
import Foundation

public typealias F8 = SIMD8<Float>

@inlinable @inline(__always)
func load8(_ p: UnsafePointer<Float>) -> F8 { UnsafeRawPointer(p).loadUnaligned(as: F8.self) }

@inlinable @inline(__always)
func store8(_ p: UnsafeMutablePointer<Float>, _ v: F8) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self) }

public enum BlockProduct {
    /// The instruction sets the product can run on.
    public enum ISA: String, Sendable { case avx2, avx512 }

    /// What this process's attention kernel runs on: AVX-512 where the CPU has it, unless TESSERA_ATTENTION_ISA=avx2.
    public static var isa: ISA { chosen.isa }

    /// A TESSERA_ATTENTION_ISA that cannot be honoured (not avx2 or avx512, or avx512 on a CPU without it), as an
    /// error message; jobs and benchmarks stop at start with it rather than run something else than asked.
    public static var configurationError: String? { chosen.error }

    private static let chosen: (isa: ISA, error: String?) = {
        let cpu: ISA = tessera_cpu_has_avx512() == 1 ? .avx512 : .avx2
        switch ProcessInfo.processInfo.environment["TESSERA_ATTENTION_ISA"] {
        case nil, "": return (cpu, nil)
        case "avx2": return (.avx2, nil)
        case "avx512":
            return (cpu, cpu == .avx512 ? nil : "TESSERA_ATTENTION_ISA=avx512, but this CPU has no AVX-512")
        case let v?: return (cpu, "TESSERA_ATTENTION_ISA=\(v): expected avx2 or avx512")
        }
    }()
    /// What the attention kernel runs on and why, for banners and benchmarks.
    public static var isaDescription: String {
        switch isa {
        case .avx512: return "AVX-512 (16-lane C kernels)"
        case .avx2:
            return "AVX2 (8-lane Swift code; "
                + (tessera_cpu_has_avx512() == 1 ? "AVX-512 present, TESSERA_ATTENTION_ISA=avx2)" : "no AVX-512 on this CPU)")
        }
    }

    /// Whether the AVX-512 code runs (`isa`; tests switch it to compare the two).
    @usableFromInline nonisolated(unsafe) static var wide = isa == .avx512

    /// C[r·ldc + c] = (accumulate ? C[r·ldc + c] : 0) + Σ_{x < depth} a[r·aRow + x·aCol] · b[x·ldb + c], r < rows, c < cols.
    @inlinable
    public static func run(c: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, cols: Int, depth: Int,
                           a: UnsafePointer<Float>, aRow: Int, aCol: Int, b: UnsafePointer<Float>, ldb: Int,
                           accumulate: Bool) {
        if wide {
            tessera_block_product_avx512(c, ldc, rows, cols, depth, a, aRow, aCol, b, ldb, accumulate ? 1 : 0)
        } else {
            runAVX2(c: c, ldc: ldc, rows: rows, cols: cols, depth: depth, a: a, aRow: aRow, aCol: aCol, b: b, ldb: ldb,
                    accumulate: accumulate)
        }
    }

    /// The product on 8-lane registers (any x86-64 CPU this build runs on).
    @inlinable
    public static func runAVX2(c: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, cols: Int, depth: Int,
                               a: UnsafePointer<Float>, aRow: Int, aCol: Int, b: UnsafePointer<Float>, ldb: Int,
                               accumulate: Bool) {
        // Tiles of 6 rows, leaving 4 or 8 rows (not 2) to tiles of 4: 64 rows = 10·6 + 4, 32 = 4·6 + 2·4.
        let sixes = rows % 6 == 2 ? Swift.max(rows / 6 - 1, 0) : rows / 6
        var r = 0
        while r < 6 * sixes {
            rows6(c + r * ldc, ldc, cols, depth, a + r * aRow, aRow, aCol, b, ldb, accumulate)
            r += 6
        }
        while r + 4 <= rows {
            rows4(c + r * ldc, ldc, cols, depth, a + r * aRow, aRow, aCol, b, ldb, accumulate)
            r += 4
        }
        while r < rows {
            row1(c + r * ldc, cols, depth, a + r * aRow, aCol, b, ldb, accumulate)
            r += 1
        }
    }

    @inlinable @inline(__always)
    static func rows6(_ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ cols: Int, _ depth: Int,
                      _ a: UnsafePointer<Float>, _ aRow: Int, _ aCol: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                      _ accumulate: Bool) {
        var col = 0
        while col + 16 <= cols {
            var s00 = F8(), s01 = F8(), s10 = F8(), s11 = F8(), s20 = F8(), s21 = F8()
            var s30 = F8(), s31 = F8(), s40 = F8(), s41 = F8(), s50 = F8(), s51 = F8()
            if accumulate {
                s00 = load8(c + col); s01 = load8(c + col + 8); s10 = load8(c + ldc + col); s11 = load8(c + ldc + col + 8)
                s20 = load8(c + 2 * ldc + col); s21 = load8(c + 2 * ldc + col + 8)
                s30 = load8(c + 3 * ldc + col); s31 = load8(c + 3 * ldc + col + 8)
                s40 = load8(c + 4 * ldc + col); s41 = load8(c + 4 * ldc + col + 8)
                s50 = load8(c + 5 * ldc + col); s51 = load8(c + 5 * ldc + col + 8)
            }
            var bp = b + col, ap = a
            for _ in 0..<depth {
                let b0 = load8(bp), b1 = load8(bp + 8)
                var v = F8(repeating: ap[0])
                s00 = s00.addingProduct(v, b0); s01 = s01.addingProduct(v, b1)
                v = F8(repeating: ap[aRow])
                s10 = s10.addingProduct(v, b0); s11 = s11.addingProduct(v, b1)
                v = F8(repeating: ap[2 * aRow])
                s20 = s20.addingProduct(v, b0); s21 = s21.addingProduct(v, b1)
                v = F8(repeating: ap[3 * aRow])
                s30 = s30.addingProduct(v, b0); s31 = s31.addingProduct(v, b1)
                v = F8(repeating: ap[4 * aRow])
                s40 = s40.addingProduct(v, b0); s41 = s41.addingProduct(v, b1)
                v = F8(repeating: ap[5 * aRow])
                s50 = s50.addingProduct(v, b0); s51 = s51.addingProduct(v, b1)
                bp += ldb; ap += aCol
            }
            store8(c + col, s00); store8(c + col + 8, s01); store8(c + ldc + col, s10); store8(c + ldc + col + 8, s11)
            store8(c + 2 * ldc + col, s20); store8(c + 2 * ldc + col + 8, s21)
            store8(c + 3 * ldc + col, s30); store8(c + 3 * ldc + col + 8, s31)
            store8(c + 4 * ldc + col, s40); store8(c + 4 * ldc + col + 8, s41)
            store8(c + 5 * ldc + col, s50); store8(c + 5 * ldc + col + 8, s51)
            col += 16
        }
        if col < cols {  // the last columns: rows 0–3 as a tile of 4, rows 4 and 5 one at a time
            rows4(c + col, ldc, cols - col, depth, a, aRow, aCol, b + col, ldb, accumulate)
            row1(c + 4 * ldc + col, cols - col, depth, a + 4 * aRow, aCol, b + col, ldb, accumulate)
            row1(c + 5 * ldc + col, cols - col, depth, a + 5 * aRow, aCol, b + col, ldb, accumulate)
        }
    }

    @inlinable @inline(__always)
    static func rows4(_ c: UnsafeMutablePointer<Float>, _ ldc: Int, _ cols: Int, _ depth: Int,
                      _ a: UnsafePointer<Float>, _ aRow: Int, _ aCol: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                      _ accumulate: Bool) {
        let c0 = c, c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc
        var col = 0
        while col + 16 <= cols {
            var s00 = F8(), s01 = F8(), s10 = F8(), s11 = F8(), s20 = F8(), s21 = F8(), s30 = F8(), s31 = F8()
            if accumulate {
                s00 = load8(c0 + col); s01 = load8(c0 + col + 8); s10 = load8(c1 + col); s11 = load8(c1 + col + 8)
                s20 = load8(c2 + col); s21 = load8(c2 + col + 8); s30 = load8(c3 + col); s31 = load8(c3 + col + 8)
            }
            var bp = b + col, ap = a
            for _ in 0..<depth {
                let b0 = load8(bp), b1 = load8(bp + 8)
                let v0 = F8(repeating: ap[0]), v1 = F8(repeating: ap[aRow])
                s00 = s00.addingProduct(v0, b0); s01 = s01.addingProduct(v0, b1)
                s10 = s10.addingProduct(v1, b0); s11 = s11.addingProduct(v1, b1)
                let v2 = F8(repeating: ap[2 * aRow]), v3 = F8(repeating: ap[3 * aRow])
                s20 = s20.addingProduct(v2, b0); s21 = s21.addingProduct(v2, b1)
                s30 = s30.addingProduct(v3, b0); s31 = s31.addingProduct(v3, b1)
                bp += ldb; ap += aCol
            }
            store8(c0 + col, s00); store8(c0 + col + 8, s01); store8(c1 + col, s10); store8(c1 + col + 8, s11)
            store8(c2 + col, s20); store8(c2 + col + 8, s21); store8(c3 + col, s30); store8(c3 + col + 8, s31)
            col += 16
        }
        if col + 8 <= cols {
            var s0 = F8(), s1 = F8(), s2 = F8(), s3 = F8()
            if accumulate { s0 = load8(c0 + col); s1 = load8(c1 + col); s2 = load8(c2 + col); s3 = load8(c3 + col) }
            var bp = b + col, ap = a
            for _ in 0..<depth {
                let b0 = load8(bp)
                s0 = s0.addingProduct(F8(repeating: ap[0]), b0); s1 = s1.addingProduct(F8(repeating: ap[aRow]), b0)
                s2 = s2.addingProduct(F8(repeating: ap[2 * aRow]), b0); s3 = s3.addingProduct(F8(repeating: ap[3 * aRow]), b0)
                bp += ldb; ap += aCol
            }
            store8(c0 + col, s0); store8(c1 + col, s1); store8(c2 + col, s2); store8(c3 + col, s3)
            col += 8
        }
        while col < cols {
            for r in 0..<4 {
                var s: Float = accumulate ? c[r * ldc + col] : 0
                for x in 0..<depth { s = s.addingProduct(a[r * aRow + x * aCol], b[x * ldb + col]) }
                c[r * ldc + col] = s
            }
            col += 1
        }
    }

    @inlinable @inline(__always)
    static func row1(_ c: UnsafeMutablePointer<Float>, _ cols: Int, _ depth: Int, _ a: UnsafePointer<Float>, _ aCol: Int,
                     _ b: UnsafePointer<Float>, _ ldb: Int, _ accumulate: Bool) {
        var col = 0
        while col + 16 <= cols {
            var s0 = accumulate ? load8(c + col) : F8(), s1 = accumulate ? load8(c + col + 8) : F8()
            var bp = b + col, ap = a
            for _ in 0..<depth {
                let v = F8(repeating: ap[0])
                s0 = s0.addingProduct(v, load8(bp)); s1 = s1.addingProduct(v, load8(bp + 8))
                bp += ldb; ap += aCol
            }
            store8(c + col, s0); store8(c + col + 8, s1)
            col += 16
        }
        if col + 8 <= cols {
            var s0 = accumulate ? load8(c + col) : F8()
            var bp = b + col, ap = a
            for _ in 0..<depth { s0 = s0.addingProduct(F8(repeating: ap[0]), load8(bp)); bp += ldb; ap += aCol }
            store8(c + col, s0)
            col += 8
        }
        while col < cols {
            var s: Float = accumulate ? c[col] : 0
            for x in 0..<depth { s = s.addingProduct(a[x * aCol], b[x * ldb + col]) }
            c[col] = s
            col += 1
        }
    }
}
