import TesseraKernels
import TesseraModel

/// AdamW over a parameter set, or over one rank's contiguous slice of it (ZeRO-1), with global
/// gradient-norm clipping and decoupled weight decay on 2-D tensors only.
///
/// The optimizer works on *segments*: pieces of parameter tensors, each with its place in the parameter
/// storage and its place in the optimizer's own state (moments and gradients share the state layout).
/// Unsharded, the state layout is the parameter layout; under ZeRO-1 it is the rank's partition
/// [partition.lowerBound, partition.upperBound) of the flat storage, and tensors that cross a partition
/// boundary are split. The gradient norm is global: `normReducer` sums squared norms over the ranks that
/// hold other parts of the gradient (identity when this rank holds all of it).
public final class AdamWOptimizer {
    public struct Segment: Sendable, Equatable {
        /// Offset in the parameter storage, offset in the state buffers, length, weight decay on/off.
        public let param: Int, state: Int, count: Int, decays: Bool
    }

    public let params: ParameterSet
    /// The flat range of parameter storage this optimizer updates.
    public let partition: Range<Int>
    public let segments: [Segment]
    /// Gradients in the state layout (the gradient storage itself when unsharded).
    public let grad: UnsafeMutablePointer<Float>
    public let m: FloatBuffer, v: FloatBuffer
    public var beta1: Double, beta2: Double, eps: Double, weightDecay: Double, clip: Double
    /// Optimizer steps taken (AdamW's bias correction); set when resuming from a checkpoint.
    public internal(set) var step = 0

    /// The whole model on this rank.
    public convenience init(params: ParameterSet, grads: ParameterSet, beta1: Double, beta2: Double, eps: Double,
                            weightDecay: Double, clip: Double) {
        self.init(params: params, partition: 0..<params.count, grad: grads.storage.ptr, beta1: beta1, beta2: beta2,
                  eps: eps, weightDecay: weightDecay, clip: clip)
    }

    /// The slice `partition` of the flat parameter storage; `grad` holds that slice's reduced gradients.
    public init(params: ParameterSet, partition: Range<Int>, grad: UnsafeMutablePointer<Float>, beta1: Double,
                beta2: Double, eps: Double, weightDecay: Double, clip: Double) {
        self.params = params; self.partition = partition; self.grad = grad
        var segs: [Segment] = []
        for (i, s) in params.specs.enumerated() {
            let lo = max(params.offsets[i], partition.lowerBound), hi = min(params.offsets[i] + s.count, partition.upperBound)
            if lo < hi { segs.append(Segment(param: lo, state: lo - partition.lowerBound, count: hi - lo, decays: s.decays)) }
        }
        segments = segs
        m = FloatBuffer(partition.count); v = FloatBuffer(partition.count)
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay; self.clip = clip
    }

    /// Bytes of optimizer state (both moments) on this rank.
    public var stateBytes: Int { m.bytes + v.bytes }

    /// Called with k before segment k is updated (a lazy checkpoint waits there for its copy of it).
    public var beforeSegment: ((Int) -> Void)?

    /// Parameter storage left out of the gradient norm: the last pipeline stage's copy of the tied token
    /// embedding (the first stage's copy, identical after their gradients are summed, counts once).
    public var normExcluded: Range<Int> = 0..<0

    /// Squared L2 norm of the gradients this optimizer holds (outside `normExcluded`).
    public func localSquaredNorm() -> Double {
        var sum = 0.0
        for s in segments {
            let lo = s.param, hi = s.param + s.count
            let cutLo = max(lo, normExcluded.lowerBound), cutHi = min(hi, normExcluded.upperBound)
            if cutLo >= cutHi { sum += AdamW.sumOfSquares(grad + s.state, s.count); continue }
            if cutLo > lo { sum += AdamW.sumOfSquares(grad + s.state, cutLo - lo) }
            if hi > cutHi { sum += AdamW.sumOfSquares(grad + s.state + (cutHi - lo), hi - cutHi) }
        }
        return sum
    }

    /// Clips by the global norm and applies one AdamW step at learning rate `lr`. Returns the norm before clipping.
    @discardableResult
    public func step(lr: Double, normReducer: (Double) -> Double = { $0 }) -> Double {
        let norm = globalNorm(normReducer)
        update(lr: lr, norm: norm)
        return norm
    }

    /// The global gradient norm: this optimizer's squared norm, summed by `normReducer` over the ranks that
    /// hold the rest of the gradient.
    public func globalNorm(_ normReducer: (Double) -> Double = { $0 }) -> Double {
        normReducer(localSquaredNorm()).squareRoot()
    }

    /// One AdamW step at learning rate `lr`, the gradients clipped by their global norm `norm`.
    public func update(lr: Double, norm: Double) {
        let scale: Float = clip > 0 && norm > clip ? Float(clip / norm) : 1
        step += 1
        let h = AdamWHyper(lr: Float(lr), beta1: Float(beta1), beta2: Float(beta2), eps: Float(eps),
                           weightDecay: Float(weightDecay))
        let p = params.storage.ptr
        for (k, s) in segments.enumerated() {
            beforeSegment?(k)
            AdamW.update(param: p + s.param, grad: grad + s.state, m: m.ptr + s.state, v: v.ptr + s.state,
                         n: s.count, hyper: h, decay: s.decays, step: step, gradScale: scale)
        }
    }

    /// The name of the first tensor (in storage order) whose gradient this optimizer holds has a value that
    /// is not finite, nil if all are finite.
    public func firstNonFiniteGradient() -> String? {
        for s in segments where !AdamW.allFinite(grad + s.state, s.count) {
            let i = params.offsets.lastIndex { $0 <= s.param }!
            return params.specs[i].name
        }
        return nil
    }
}
