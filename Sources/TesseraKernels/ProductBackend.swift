import Foundation

// What computes a bf16 product, chosen once per process. Its operands arrive as bf16 values in float32
// storage (rounded where they were produced), so both backends compute the same product, up to the order
// of the fp32 accumulation:
//   emulated: OpenBLAS sgemm on those floats (any CPU; runs at the fp32 rate);
//   onednn:   the operands narrowed to 16 bits (exact: their low bits are zero) and multiplied by oneDNN's
//             bf16 matmul, on CPUs with AVX512_BF16 (about twice the fp32 rate where measured).
// The choice: oneDNN when the CPU has AVX512_BF16 and oneDNN has a bf16 matmul for it; `TESSERA_BF16_PRODUCTS`
// = emulated | onednn overrides (onednn where oneDNN has no bf16 matmul is an error, not a quiet fallback).

public enum ProductBackend: String, Sendable, CaseIterable {
    case emulated, onednn

    /// The backend of this process's bf16 products.
    public static var bf16: ProductBackend { chosen.backend }

    /// Why the backend was chosen, for banners and benchmarks.
    public static var reason: String { chosen.reason }

    /// A forced choice that cannot be honoured, as an error message (nil when none).
    public static var configurationError: String? { chosen.error }

    private static let chosen: (backend: ProductBackend, reason: String, error: String?) = {
        let impl = OneDNN.implementation(.bf16)
        let have = impl.map { "oneDNN \($0)" } ?? "oneDNN has no bf16 matmul here"
        switch ProcessInfo.processInfo.environment["TESSERA_BF16_PRODUCTS"] {
        case "emulated": return (.emulated, "forced by TESSERA_BF16_PRODUCTS; \(have)", nil)
        case "onednn":
            if impl != nil { return (.onednn, "forced by TESSERA_BF16_PRODUCTS; \(have)", nil) }
            return (.emulated, have, "TESSERA_BF16_PRODUCTS=onednn, but \(have)")
        case let v? where !v.isEmpty:
            return (.emulated, have, "TESSERA_BF16_PRODUCTS=\(v): expected emulated or onednn")
        default:
            if MachineCheck.hasBF16, impl != nil { return (.onednn, "avx512_bf16; \(have)", nil) }
            return (.emulated, (MachineCheck.hasBF16 ? "avx512_bf16, but " : "no avx512_bf16; ") + have, nil)
        }
    }()

    /// C = alpha · op(A) · op(B) + beta · C on oneDNN's bf16 matmul, A and B bf16 values in float storage:
    /// each is narrowed into a 16-bit copy (row stride kept), then multiplied.
    static func gemmBF16(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                         a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                         beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        if m == 0 || n == 0 { return }
        // As stored: A is [m, k] (or [k, m] transposed), B is [k, n] (or [n, k]).
        let aRows = transA ? k : m, aCols = transA ? m : k, bRows = transB ? n : k, bCols = transB ? k : n
        lock.lock(); defer { lock.unlock() }
        do {
            // An operand inside a registered twin (the model's bf16 weights) is read from its 16-bit copy.
            let a16 = twin(of: a, rows: aRows, cols: aCols, ld: lda) ?? narrowed(a, into: a16Buffer, rows: aRows, cols: aCols, ld: lda)
            let b16 = twin(of: b, rows: bRows, cols: bCols, ld: ldb) ?? narrowed(b, into: b16Buffer, rows: bRows, cols: bCols, ld: ldb)
            do {
                try OneDNN.gemm(type: .bf16, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                a: a16, lda: lda, b: b16, ldb: ldb, beta: beta, c: c, ldc: ldc)
            } catch {
                fatalError("\(error) (the bf16 product backend is \(bf16.rawValue): \(reason))")
            }
        }
    }

    private static func narrowed(_ src: UnsafePointer<Float>, into buffer: HalfBuffer, rows: Int, cols: Int, ld: Int)
        -> UnsafeMutablePointer<UInt16> {
        let dst = buffer.reserve(rows * ld)
        narrow(src, into: dst, rows: rows, cols: cols, ld: ld)
        return dst
    }

    // MARK: twins

    /// A float range whose owner keeps a 16-bit copy of it (element i of `halves` is element i of the range,
    /// narrowed), so a product reading inside it skips narrowing: the model's bf16 weights, refreshed after
    /// each optimizer step, are otherwise narrowed again by every product (the LM head's tied embedding table
    /// once per row chunk). The owner registers it, keeps the copy equal to the floats whenever a product may
    /// read them, and unregisters it before freeing either.
    public final class Twin: @unchecked Sendable {
        public let floats: UnsafePointer<Float>, count: Int
        public let halves: UnsafeMutablePointer<UInt16>
        /// A copy of `count` floats at `floats`, registered with the backend until `close()` (or deinit).
        public init(of floats: UnsafePointer<Float>, count: Int) {
            self.floats = floats; self.count = count
            halves = .allocate(capacity: max(count, 1))
            lock.lock(); twins.removeAll { $0.twin == nil }; twins.append(WeakTwin(twin: self)); lock.unlock()
        }
        /// Narrows the floats (already bf16 values) into the copy, split over the kernel threads.
        public func refresh() { BF16.narrowParallel(floats, into: halves, count: count) }
        /// Unregisters the copy: products read the floats again. The owner calls it before freeing the floats.
        public func close() {
            lock.lock(); twins.removeAll { $0.twin == nil || $0.twin === self }; lock.unlock()
        }
        // No lock here: a product scanning the registry may hold the last reference and release it under the lock.
        // The registry's weak entry already reads nil.
        deinit { halves.deallocate() }
    }

    /// The registry does not keep a twin alive: a model freed with its weights leaves nothing behind that a
    /// later allocation at the same address could be mistaken for (and its owner closes it first).
    private struct WeakTwin { weak var twin: Twin? }
    nonisolated(unsafe) private static var twins: [WeakTwin] = []

    /// The 16-bit copy of an operand (rows × cols, row stride ld) lying wholly inside a registered twin.
    private static func twin(of p: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int) -> UnsafeMutablePointer<UInt16>? {
        let extent = (rows - 1) * ld + cols
        for w in twins {
            guard let t = w.twin, p >= t.floats, p + extent <= t.floats + t.count else { continue }
            twinReads += 1
            return t.halves + (p - t.floats)
        }
        return nil
    }

    /// Operands read from twins so far (for tests).
    nonisolated(unsafe) static var twinReads = 0

    /// The 16-bit operand copies, grown to the largest product and reused (one product at a time).
    private static let lock = NSLock()
    private static let a16Buffer = HalfBuffer(), b16Buffer = HalfBuffer()

    final class HalfBuffer: @unchecked Sendable {
        private var p = UnsafeMutablePointer<UInt16>.allocate(capacity: 1)
        private var capacity = 1
        func reserve(_ n: Int) -> UnsafeMutablePointer<UInt16> {
            if n > capacity { p.deallocate(); p = .allocate(capacity: n); capacity = n }
            return p
        }
        deinit { p.deallocate() }
    }

    /// Narrows a rows × cols block with row stride ld, rows split over the kernel threads.
    static func narrow(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, rows: Int, cols: Int, ld: Int) {
        let S = SendConstPtr(src), D = SendPtr16(dst)
        Threads.parallelRanges(rows, grain: max(1, 65_536 / max(cols, 1))) { _, lo, hi in
            if cols == ld {
                BF16.narrow(S.p + lo * ld, into: D.p + lo * ld, count: (hi - lo) * ld)
            } else {
                for r in lo..<hi { BF16.narrow(S.p + r * ld, into: D.p + r * ld, count: cols) }
            }
        }
    }
}

struct SendPtr16: @unchecked Sendable {
    let p: UnsafeMutablePointer<UInt16>
    init(_ p: UnsafeMutablePointer<UInt16>) { self.p = p }
}
