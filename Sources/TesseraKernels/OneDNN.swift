import COneDNN
import Foundation
import Synchronization

// Row-major matrix products on oneDNN's matmul primitive, the native bf16 product of mixed precision on CPUs
// with AVX512_BF16 (Debian's OpenBLAS has no bf16 product; see docs/precision.md for the measurements).
//
// The product is split over the kernel threads as `BLAS.gemm` splits sgemm (`Threads.splitProduct`: the larger of M and N
// cut into blocks, one single-threaded product per block), so one threading model runs every kernel: oneDNN
// is told to use one OpenMP thread on the calling thread. A primitive is made once per (block shape,
// strides, alpha, beta, data type, block index) and kept; its scratchpad is its own (user mode), so blocks
// run concurrently without sharing anything. Operands are f32, or bf16 with an f32 result; beta ≠ 0 is a
// sum post-op on C.

public enum OneDNN {
    public enum DataType: Sendable { case f32, bf16 }

    /// Why a product could not be made (oneDNN's status and what was asked).
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The implementation oneDNN picks for a 256³ product of `type` on this CPU (e.g. "brg:avx512_core_bf16"),
    /// or nil when it has none (oneDNN 2.6 has no bf16 matmul for AVX2-only CPUs).
    public static func implementation(_ type: DataType) -> String? {
        let key = Key(slot: -1, transA: false, transB: false, m: 256, n: 256, k: 256, lda: 256, ldb: 256, ldc: 256,
                      alpha: 1, beta: 0, type: type)
        return (try? Entry(key, engine: engine))?.implementation
    }

    /// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, with A and B of `type` (`Float` or bf16 `UInt16`
    /// elements) and C float, split over the kernel threads.
    public static func gemm(type: DataType, transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                            alpha: Float = 1, a: UnsafeRawPointer, lda: Int, b: UnsafeRawPointer, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) throws {
        if m == 0 || n == 0 { return }
        let size = type == .bf16 ? 2 : 4
        let A = SendConstRaw(a), B = SendConstRaw(b), C = SendPtr(c)
        let failure = Mutex<Failure?>(nil)
        func block(_ slot: Int, rows lo: Int, _ hi: Int, cols clo: Int, _ chi: Int) {
            // Rows lo..<hi of op(A): a row offset when A is not transposed, a column offset when it is;
            // columns clo..<chi of op(B) likewise.
            let ap = A.p + (transA ? lo : lo * lda) * size, bp = B.p + (transB ? clo * ldb : clo) * size
            let key = Key(slot: slot, transA: transA, transB: transB, m: hi - lo, n: chi - clo, k: k, lda: lda, ldb: ldb,
                          ldc: ldc, alpha: alpha, beta: beta, type: type)
            do { try run(key, a: ap, b: bp, c: C.p + lo * ldc + clo) } catch let f as Failure {
                failure.withLock { $0 = $0 ?? f }
            } catch { failure.withLock { $0 = $0 ?? Failure(description: "\(error)") } }
        }
        Threads.splitProduct(m: m, n: n, k: k) { slot, rows, cols in
            block(slot, rows: rows.lowerBound, rows.upperBound, cols: cols.lowerBound, cols.upperBound)
        }
        if let f = failure.withLock({ $0 }) { throw f }
    }

    // MARK: primitives

    struct Key: Hashable {
        let slot: Int, transA: Bool, transB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
        let alpha: Float, beta: Float, type: DataType
    }

    /// One product's primitive with its memory objects (their data pointers set per call), scratchpad and stream.
    final class Entry: @unchecked Sendable {
        let primitive: dnnl_primitive_t, stream: dnnl_stream_t
        let src: dnnl_memory_t, weights: dnnl_memory_t, dst: dnnl_memory_t
        let scratchpad: dnnl_memory_t?, scratchBytes: UnsafeMutableRawPointer?
        let implementation: String

        init(_ key: Key, engine: dnnl_engine_t) throws {
            let t = key.type == .bf16 ? dnnl_bf16 : dnnl_f32
            // op(A) is [m, k]: A stored [m, k] with row stride lda, or [k, m] (transposed: strides swapped).
            var aMd = dnnl_memory_desc_t(), bMd = dnnl_memory_desc_t(), cMd = dnnl_memory_desc_t()
            let lda = Int64(key.lda), ldb = Int64(key.ldb)
            try check(dnnl_memory_desc_init_by_strides(&aMd, 2, [Int64(key.m), Int64(key.k)], t, key.transA ? [1, lda] : [lda, 1]), "source", key)
            try check(dnnl_memory_desc_init_by_strides(&bMd, 2, [Int64(key.k), Int64(key.n)], t, key.transB ? [1, ldb] : [ldb, 1]), "weights", key)
            try check(dnnl_memory_desc_init_by_strides(&cMd, 2, [Int64(key.m), Int64(key.n)], dnnl_f32, [Int64(key.ldc), 1]), "destination", key)
            var desc = dnnl_matmul_desc_t()
            try check(dnnl_matmul_desc_init(&desc, &aMd, &bMd, nil, &cMd), "matmul", key)
            var attr: dnnl_primitive_attr_t? = nil, postOps: dnnl_post_ops_t? = nil
            try check(dnnl_primitive_attr_create(&attr), "attributes", key)
            defer { dnnl_primitive_attr_destroy(attr); if let postOps { dnnl_post_ops_destroy(postOps) } }
            try check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode", key)
            if key.alpha != 1 {
                var alpha = key.alpha
                try check(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "alpha", key)
            }
            if key.beta != 0 {
                try check(dnnl_post_ops_create(&postOps), "post-ops", key)
                try check(dnnl_post_ops_append_sum(postOps, key.beta), "beta", key)
                try check(dnnl_primitive_attr_set_post_ops(attr, postOps), "post-ops", key)
            }
            OneDNN.singleThreaded()
            var pd: dnnl_primitive_desc_t? = nil
            try check(dnnl_primitive_desc_create(&pd, &desc, attr, engine, nil), "primitive descriptor", key)
            defer { dnnl_primitive_desc_destroy(pd) }
            var info: UnsafePointer<CChar>? = nil
            _ = withUnsafeMutablePointer(to: &info) { dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, $0) }
            implementation = info.map { String(cString: $0) } ?? "unknown"
            var prim: dnnl_primitive_t? = nil
            try check(dnnl_primitive_create(&prim, pd), "primitive", key)
            primitive = prim!
            var s: dnnl_stream_t? = nil, ms: [dnnl_memory_t?] = [nil, nil, nil]
            try check(dnnl_stream_create(&s, engine, UInt32(dnnl_stream_default_flags.rawValue)), "stream", key)
            stream = s!
            for (i, md) in [aMd, bMd, cMd].enumerated() {
                var md = md
                try check(dnnl_memory_create(&ms[i], &md, engine, nil), "memory", key)
            }
            src = ms[0]!; weights = ms[1]!; dst = ms[2]!
            let spMd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)
            let bytes = spMd.map { dnnl_memory_desc_get_size($0) } ?? 0
            if let spMd, bytes > 0 {
                let buf = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
                var m: dnnl_memory_t? = nil
                try check(dnnl_memory_create(&m, spMd, engine, buf), "scratchpad", key)
                scratchpad = m; scratchBytes = buf
            } else {
                scratchpad = nil; scratchBytes = nil
            }
        }

        deinit {
            dnnl_primitive_destroy(primitive); dnnl_stream_destroy(stream)
            for m in [src, weights, dst] { dnnl_memory_destroy(m) }
            if let scratchpad { dnnl_memory_destroy(scratchpad) }
            scratchBytes?.deallocate()
        }
    }

    static func check(_ s: dnnl_status_t, _ what: String, _ key: Key) throws {
        guard s != dnnl_success else { return }
        let name = s == dnnl_unimplemented ? "unimplemented on this CPU" : "status \(s.rawValue)"
        throw Failure(description: "oneDNN \(key.type) matmul \(key.m)×\(key.k)·\(key.k)×\(key.n) "
                      + "(transA \(key.transA), transB \(key.transB)): \(what): \(name)")
    }

    nonisolated(unsafe) static let engine: dnnl_engine_t = {
        var e: dnnl_engine_t? = nil
        guard dnnl_engine_create(&e, dnnl_cpu, 0) == dnnl_success, let e else { fatalError("oneDNN: no CPU engine") }
        return e
    }()

    private static let cache = Mutex<[Key: Entry]>([:])
    /// Most primitives kept. Training runs a few dozen shapes; a caller whose M changes every call (the sampler's
    /// growing sequence) would otherwise add one per call for the life of the process. Past this the cache
    /// starts over (an entry being executed stays alive through its caller's reference).
    static let cacheLimit = 512

    static func run(_ key: Key, a: UnsafeRawPointer, b: UnsafeRawPointer, c: UnsafeMutablePointer<Float>) throws {
        let entry: Entry
        if let e = cache.withLock({ $0[key] }) { entry = e } else {
            entry = try Entry(key, engine: engine)
            cache.withLock {
                if $0.count >= cacheLimit { $0.removeAll() }
                $0[key] = entry
            }
        }
        singleThreaded()
        dnnl_memory_set_data_handle(entry.src, UnsafeMutableRawPointer(mutating: a))
        dnnl_memory_set_data_handle(entry.weights, UnsafeMutableRawPointer(mutating: b))
        dnnl_memory_set_data_handle(entry.dst, c)
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC_0, memory: entry.src),
                    dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS_0, memory: entry.weights),
                    dnnl_exec_arg_t(arg: DNNL_ARG_DST_0, memory: entry.dst)]
        if let sp = entry.scratchpad { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: sp)) }
        try check(dnnl_primitive_execute(entry.primitive, entry.stream, Int32(args.count), args), "execute", key)
        try check(dnnl_stream_wait(entry.stream), "wait", key)
    }

    /// Primitives made so far (for tests).
    static var cachedPrimitives: Int { cache.withLock { $0.count } }

    // MARK: threads

    /// This build of oneDNN threads with OpenMP, whose thread count is a per-thread setting: every thread
    /// that calls oneDNN sets it to one (the product is already split over the kernel threads). The entry
    /// point is looked up at run time: libgomp comes with libdnnl, and linking it directly would need its
    /// development files.
    static func singleThreaded() { setOMPThreads?(1) }

    private static let setOMPThreads: (@convention(c) (Int32) -> Void)? = {
        guard let sym = dlsym(dlopen(nil, RTLD_NOW), "omp_set_num_threads") else { return nil }
        return unsafeBitCast(sym, to: (@convention(c) (Int32) -> Void).self)
    }()
}

/// A raw read-only pointer handed to the kernel threads.
struct SendConstRaw: @unchecked Sendable {
    let p: UnsafeRawPointer
    init(_ p: UnsafeRawPointer) { self.p = p }
}
