import TesseraModel
import TesseraTraining

/// Small adapters so model-level tests can use the training module's optimizer.
enum TesseraTrainingShim {
    static func optimizer(_ model: GPT) -> (Double) -> Void {
        let opt = AdamWOptimizer(params: model.params, grads: model.grads, beta1: 0.9, beta2: 0.95, eps: 1e-8,
                                 weightDecay: 0, clip: 0)
        return { lr in opt.step(lr: lr) }
    }
}
