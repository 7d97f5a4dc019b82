// Every tensor the backward pass needs is allocated through the activation store, which counts the
// bytes it holds. The policy seam (keep / recompute / offload, a later capability) plugs in here: today
// every saved tensor is kept, so the peak equals the total allocated for one micro-batch.

import TesseraKernels

public final class ActivationStore: @unchecked Sendable {
    public private(set) var savedBytes = 0      // tensors saved for the backward
    public private(set) var workspaceBytes = 0  // transient buffers reused layer to layer
    private var buffers: [FloatBuffer] = []

    public init() {}

    /// A tensor that the backward pass reads (counted as activation memory).
    public func saved(_ count: Int) -> UnsafeMutablePointer<Float> {
        let b = FloatBuffer(count)
        buffers.append(b)
        savedBytes += b.bytes
        return b.ptr
    }

    /// A transient buffer (gradients in flight, outputs consumed at once).
    public func workspace(_ count: Int) -> UnsafeMutablePointer<Float> {
        let b = FloatBuffer(count)
        buffers.append(b)
        workspaceBytes += b.bytes
        return b.ptr
    }

    public var totalBytes: Int { savedBytes + workspaceBytes }
}
