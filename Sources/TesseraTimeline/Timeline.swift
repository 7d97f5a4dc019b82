// What a rank spends its step on. Three phases per step:
//   compute — forward, backward, optimizer (work spans minus the communication waits inside them),
//   comm    — time blocked on communication (blocking collectives, waits on requests),
//   idle    — the rest of the step's wall time (data loading, bookkeeping, later pipeline bubbles).
// With tracing on, the same spans become Chrome trace events (see Trace.swift).
// One Timeline per process (one rank per process); the step loop runs on one thread.

import Foundation

/// Monotonic nanoseconds.
@inline(__always) public func nowNs() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

public struct PhaseTotals: Sendable, Equatable {
    public var wallNs: UInt64 = 0, computeNs: UInt64 = 0, commNs: UInt64 = 0
    public init() {}
    public var idleNs: UInt64 { wallNs > computeNs + commNs ? wallNs - computeNs - commNs : 0 }
    public var seconds: (compute: Double, comm: Double, idle: Double, wall: Double) {
        (Double(computeNs) / 1e9, Double(commNs) / 1e9, Double(idleNs) / 1e9, Double(wallNs) / 1e9)
    }
}

public final class Timeline: @unchecked Sendable {
    nonisolated(unsafe) public static var shared = Timeline()

    /// Totals of the current step (reset by `beginStep`).
    public private(set) var step = PhaseTotals()
    private var stepStart: UInt64 = 0
    /// Communication wait accumulated since the process started (work spans subtract their share).
    public private(set) var commTotalNs: UInt64 = 0
    public let trace: TraceRecorder?
    private let lock = NSLock()

    public init(trace: TraceRecorder? = nil) { self.trace = trace }

    public func beginStep() {
        step = PhaseTotals(); stepStart = nowNs()
    }

    public func endStep() { step.wallNs = nowNs() - stepStart }

    /// Times a piece of work (forward, backward, optimizer); communication waits inside it are not compute.
    @inline(__always)
    public func work<T>(_ name: @autoclosure () -> String, _ body: () throws -> T) rethrows -> T {
        let t0 = nowNs(), c0 = commTotalNs
        let r = try body()
        let t1 = nowNs(), inside = commTotalNs - c0, dt = t1 - t0
        step.computeNs += dt > inside ? dt - inside : 0
        trace?.complete(name(), cat: "compute", beginNs: t0, endNs: t1, track: .compute)
        return r
    }

    /// Records time blocked on communication (called by the communication layer).
    public func commWait(_ name: @autoclosure () -> String, beginNs: UInt64, endNs: UInt64) {
        lock.lock()
        let dt = endNs - beginNs
        commTotalNs += dt; step.commNs += dt
        lock.unlock()
        trace?.complete(name(), cat: "wait", beginNs: beginNs, endNs: endNs, track: .compute)
    }

    /// Records a span inside a work span for the trace only (phase totals unchanged): recomputation before a
    /// block's backward, a wait for the offload tier.
    public func mark(_ name: @autoclosure () -> String, cat: String, beginNs: UInt64, endNs: UInt64) {
        trace?.complete(name(), cat: cat, beginNs: beginNs, endNs: endNs, track: .compute)
    }

    /// Records a non-blocking operation's lifetime, issue to observed completion, on the communication track.
    public func commInFlight(_ name: @autoclosure () -> String, beginNs: UInt64, endNs: UInt64) {
        trace?.complete(name(), cat: "comm", beginNs: beginNs, endNs: endNs, track: .communication)
    }
}
