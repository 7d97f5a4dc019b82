/// Reusable per-kernel scratch memory: grows to the largest request seen and is then reused, so a
/// training step allocates nothing once the first step has run.
public final class Scratch: @unchecked Sendable {
    private var buffer = FloatBuffer(0)
    public init() {}
    /// A pointer to at least `n` floats (contents undefined). Valid until the next call.
    public func floats(_ n: Int) -> UnsafeMutablePointer<Float> {
        if buffer.count < n { buffer = FloatBuffer(n) }
        return buffer.ptr
    }
    public var bytes: Int { buffer.bytes }
}
