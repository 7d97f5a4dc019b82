// Every buffer of activation memory is allocated through an activation store, which reports it to the
// rank's meter by kind: tensors saved for the backward, the recompute buffer (one block's tensors, refilled
// before each recomputed block's backward), offload staging slots, and the backward's transient workspace.
// A buffer counts from its allocation to its release; buffers are made when a run starts (pipeline pools:
// when the schedule first needs them) and reused, never inside a step's inner loops.

import Foundation
import TesseraKernels

/// Activation bytes held by this process (one rank), by kind, with the peak since `resetPeak`.
public final class ActivationMeter: @unchecked Sendable {
    public enum Kind: Int, CaseIterable, Sendable { case saved, recompute, staging, workspace }
    public static let shared = ActivationMeter()

    private let lock = NSLock()
    private var held = [Int](repeating: 0, count: Kind.allCases.count)
    private var peakActivation = 0

    public init() {}

    func add(_ kind: Kind, _ bytes: Int) {
        lock.lock(); defer { lock.unlock() }
        held[kind.rawValue] += bytes
        peakActivation = max(peakActivation, activationLocked)
    }

    private var activationLocked: Int { held[0] + held[1] + held[2] }

    /// Bytes of one kind held now.
    public func bytes(_ kind: Kind) -> Int { lock.lock(); defer { lock.unlock() }; return held[kind.rawValue] }
    /// Activation memory held now: saved tensors, recompute buffers and offload staging (not the workspace).
    public var activationBytes: Int { lock.lock(); defer { lock.unlock() }; return activationLocked }
    /// The most activation memory held at once since the last `resetPeak`.
    public var peakBytes: Int { lock.lock(); defer { lock.unlock() }; return peakActivation }
    /// Starts a new peak measurement (at the start of a step) from what is held now.
    public func resetPeak() { lock.lock(); peakActivation = activationLocked; lock.unlock() }
}

public final class ActivationStore: @unchecked Sendable {
    public let meter: ActivationMeter
    private var buffers: [(FloatBuffer, ActivationMeter.Kind)] = []
    private var byKind = [Int](repeating: 0, count: ActivationMeter.Kind.allCases.count)

    public init(meter: ActivationMeter = .shared) { self.meter = meter }

    deinit { for (b, k) in buffers { meter.add(k, -b.bytes) } }

    /// A buffer of `count` floats of the given kind.
    public func allocate(_ count: Int, _ kind: ActivationMeter.Kind) -> UnsafeMutablePointer<Float> {
        let b = FloatBuffer(count)
        buffers.append((b, kind))
        byKind[kind.rawValue] += b.bytes
        meter.add(kind, b.bytes)
        return b.ptr
    }

    /// A tensor that the backward pass reads (counted as activation memory).
    public func saved(_ count: Int) -> UnsafeMutablePointer<Float> { allocate(count, .saved) }
    /// A transient buffer (gradients in flight, outputs consumed at once).
    public func workspace(_ count: Int) -> UnsafeMutablePointer<Float> { allocate(count, .workspace) }

    public func bytes(_ kind: ActivationMeter.Kind) -> Int { byKind[kind.rawValue] }
    public var savedBytes: Int { bytes(.saved) }
    public var workspaceBytes: Int { bytes(.workspace) }
    /// Saved, recompute and staging bytes (what the memory policies govern).
    public var activationBytes: Int { bytes(.saved) + bytes(.recompute) + bytes(.staging) }
    public var totalBytes: Int { byKind.reduce(0, +) }
}
