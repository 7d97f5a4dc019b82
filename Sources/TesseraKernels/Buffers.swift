// Owned, 64-byte-aligned float storage with a stable address (safe to hand to MPI non-blocking calls
// and to background threads). The single place where the runtime's `@unchecked Sendable` owners live.

/// A fixed-size, zero-initialised, 64-byte-aligned Float buffer.
public final class FloatBuffer: @unchecked Sendable {
    public let ptr: UnsafeMutablePointer<Float>
    public let count: Int

    public init(_ count: Int, value: Float = 0) {
        precondition(count >= 0, "FloatBuffer: negative size \(count)")
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        ptr = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        ptr.initialize(repeating: value, count: max(count, 1))
        self.count = count
    }
    deinit { UnsafeMutableRawPointer(ptr).deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: ptr, count: count) }
    public var bytes: Int { count * 4 }
    public func zero() { ptr.update(repeating: 0, count: count) }
    public subscript(i: Int) -> Float {
        get { ptr[i] }
        set { ptr[i] = newValue }
    }
}

/// A pointer wrapper that may cross into worker closures. Kernels guarantee disjoint writes.
public struct SendPtr<T>: @unchecked Sendable {
    public let p: UnsafeMutablePointer<T>
    @inlinable public init(_ p: UnsafeMutablePointer<T>) { self.p = p }
}

/// A read-only pointer wrapper for worker closures.
public struct SendConstPtr<T>: @unchecked Sendable {
    public let p: UnsafePointer<T>
    @inlinable public init(_ p: UnsafePointer<T>) { self.p = p }
    @inlinable public init(_ p: UnsafeMutablePointer<T>) { self.p = UnsafePointer(p) }
}
