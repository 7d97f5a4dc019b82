import Foundation
import Dispatch
import Synchronization

/// The kernel thread count of this rank (`training.threads`). Non-BLAS kernels split their rows,
/// heads or blocks into this many chunks; large matrix products are split the same way, with
/// OpenBLAS itself kept single-threaded so that exactly `count` threads compute.
public enum Threads {
    nonisolated(unsafe) private static var _count = 1

    public static var count: Int { _count }

    /// Sets the kernel thread count and pins OpenBLAS to one internal thread.
    public static func configure(_ n: Int) {
        _count = max(1, n)
        BLAS.setThreads(1)
    }

    /// Cores this process may run on (its CPU affinity, e.g. as bound by mpirun), never less than 1.
    /// Read from `Cpus_allowed_list` in /proc/self/status ("0-3,8"); elsewhere the active processor count.
    public static func availableCores() -> Int {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }),
           let list = line.split(separator: ":").last {
            let n = cpuListCount(String(list))
            if n > 0 { return n }
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    /// Number of CPUs in a Linux CPU list such as "0-3,8".
    public static func cpuListCount(_ list: String) -> Int {
        var n = 0
        for part in list.split(separator: ",") {
            let ends = part.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "-").compactMap { Int($0) }
            if ends.count == 1 { n += 1 } else if ends.count == 2, ends[1] >= ends[0] { n += ends[1] - ends[0] + 1 }
        }
        return n
    }

    /// Runs `body(chunk, lo, hi)` over `[0, n)` cut into at most `count` contiguous chunks whose sizes are
    /// multiples of `grain` (except the last). Chunk 0 runs on the calling thread.
    @inlinable
    /// How a matrix product C[m, n] (inner dimension k) is split over the kernel threads, for every matrix library:
    /// the larger of m and n cut into contiguous ranges (multiples of 16), one block per thread; one block when there
    /// is one thread or the product is under 2 MFLOP. `body(slot, rows, columns)` computes one block.
    public static func splitProduct(m: Int, n: Int, k: Int, _ body: (Int, Range<Int>, Range<Int>) -> Void) {
        if count == 1 || 2 * m * n * k < 2_000_000 {
            body(0, 0..<m, 0..<n)
        } else if m >= n {
            parallelRanges(m, grain: 16) { slot, lo, hi in body(slot, lo..<hi, 0..<n) }
        } else {
            parallelRanges(n, grain: 16) { slot, lo, hi in body(slot, 0..<m, lo..<hi) }
        }
    }

    public static func parallelRanges(_ n: Int, grain: Int = 1, _ body: (Int, Int, Int) -> Void) {
        if n <= 0 { return }
        let g = max(1, grain)
        let units = (n + g - 1) / g
        let chunks = min(count, units)
        if chunks <= 1 { body(0, 0, n); return }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let lo = (units * c / chunks) * g
                let hi = min(n, (units * (c + 1) / chunks) * g)
                if lo < hi { box.value(c, lo, hi) }
            }
        }
    }

    /// Runs `body(i)` for every i in `[0, n)`, spread over the threads (static interleaving of tasks,
    /// for tasks of similar cost). `body` receives the worker index as its first argument.
    @inlinable
    public static func parallelTasks(_ n: Int, _ body: (_ worker: Int, _ task: Int) -> Void) {
        if n <= 0 { return }
        let workers = min(count, n)
        if workers <= 1 { for i in 0..<n { body(0, i) }; return }
        withoutActuallyEscaping(body) { body in
            let box = UncheckedBox(body)
            let next = AtomicCounter()
            DispatchQueue.concurrentPerform(iterations: workers) { w in
                while true {
                    let i = next.increment()
                    if i >= n { break }
                    box.value(w, i)
                }
            }
        }
    }
}

/// Carries a non-Sendable closure into `concurrentPerform`; callers guarantee the closure is safe to run concurrently.
public struct UncheckedBox<T>: @unchecked Sendable {
    public let value: T
    @inlinable public init(_ v: T) { value = v }
}

/// An atomic counter handing out task indices (dynamic scheduling for uneven tasks such as causal attention).
public final class AtomicCounter: @unchecked Sendable {
    private let value = Atomic<Int>(0)
    public init() {}
    @inlinable public func increment() -> Int { _increment() }
    @usableFromInline func _increment() -> Int { value.wrappingAdd(1, ordering: .relaxed).oldValue }
}
