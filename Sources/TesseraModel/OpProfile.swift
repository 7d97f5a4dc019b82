import Dispatch

/// Per-op wall time of forward and backward passes, accumulated while `enabled` (off by default: one
/// branch per op). `tessera bench --profile` prints it.
public enum OpProfile {
    public enum Op: Int, CaseIterable, Sendable {
        case embedding, layerNorm, matmul, attention, gelu, residual, lmHeadLoss, optimizer, rounding, rope
        public var name: String {
            ["embedding", "layernorm", "matmul (sgemm)", "attention", "gelu", "residual", "lm head + loss", "optimizer",
             "bf16 rounding", "rope"][rawValue]
        }
    }

    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) static var nanos = [UInt64](repeating: 0, count: Op.allCases.count)

    @inlinable @inline(__always)
    public static func time<R>(_ op: Op, _ body: () -> R) -> R {
        if !enabled { return body() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r = body()
        add(op, DispatchTime.now().uptimeNanoseconds - t0)
        return r
    }

    @usableFromInline static func add(_ op: Op, _ ns: UInt64) { nanos[op.rawValue] &+= ns }

    public static func reset() { nanos = [UInt64](repeating: 0, count: Op.allCases.count) }

    /// (op, seconds) for every op with time recorded.
    public static var totals: [(Op, Double)] {
        Op.allCases.compactMap { nanos[$0.rawValue] > 0 ? ($0, Double(nanos[$0.rawValue]) / 1e9) : nil }
    }
}
