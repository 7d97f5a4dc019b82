import TesseraKernels
import TesseraModel

/// AdamW over a parameter set, with moments in the same layout, global gradient-norm clipping and
/// decoupled weight decay on 2-D tensors only. The gradient norm is global: `normReducer` sums the
/// squared norm over the ranks that hold other parts of the gradient (identity on one rank).
public final class AdamWOptimizer {
    public let params: ParameterSet, grads: ParameterSet
    public let m: ParameterSet, v: ParameterSet
    public var beta1: Double, beta2: Double, eps: Double, weightDecay: Double, clip: Double
    public private(set) var step = 0

    public init(params: ParameterSet, grads: ParameterSet, beta1: Double, beta2: Double, eps: Double,
                weightDecay: Double, clip: Double) {
        self.params = params; self.grads = grads
        m = params.sameLayout(); v = params.sameLayout()
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay; self.clip = clip
    }

    /// Bytes of optimizer state (both moments).
    public var stateBytes: Int { m.storage.bytes + v.storage.bytes }

    /// Squared L2 norm of the local gradients.
    public func localSquaredNorm() -> Double {
        var s = 0.0
        for i in 0..<grads.specs.count { s += AdamW.sumOfSquares(grads.pointer(i), grads.specs[i].count) }
        return s
    }

    /// Clips by the global norm and applies one AdamW step at learning rate `lr`. Returns the norm before clipping.
    @discardableResult
    public func step(lr: Double, normReducer: (Double) -> Double = { $0 }) -> Double {
        let norm = normReducer(localSquaredNorm()).squareRoot()
        let scale: Float = clip > 0 && norm > clip ? Float(clip / norm) : 1
        step += 1
        let h = AdamWHyper(lr: Float(lr), beta1: Float(beta1), beta2: Float(beta2), eps: Float(eps),
                           weightDecay: Float(weightDecay))
        for (i, s) in params.specs.enumerated() {
            AdamW.update(param: params.pointer(i), grad: grads.pointer(i), m: m.pointer(i), v: v.pointer(i),
                         n: s.count, hyper: h, decay: s.decays, step: step, gradScale: scale)
        }
        return norm
    }
}
