// A step whose loss or gradient norm is not finite never updates any rank. The verdict is agreed over the
// whole job (an allreduce of one flag) after the gradients are reduced and before the optimizer runs, and the
// report names the first tensor, in global storage order, whose gradient is not finite on any rank.
// `training.on_nonfinite` then decides: "stop" ends the run with an error (no update, no checkpoint of that
// state, the last good checkpoint kept); "skip" drops the step's update and goes on, until
// `training.max_skipped` steps in a row were skipped.

import TesseraModel

extension Trainer {
    /// nil when the loss and the gradient norm are finite on every rank; else what was not finite. A
    /// collective over the world, at every step.
    func nonFinite(loss: Double, norm: Double, step: Int) -> String? {
        var bad: Int32 = loss.isFinite && norm.isFinite ? 0 : 1
        if let world = mesh?.world, world.size > 1 {
            bad = orAbort(step) { try world.allreduce(bad, op: .max, label: "non-finite check") }
        }
        guard bad == 1 else { return nil }
        // Only now (a rare step) scan the gradients: the first bad tensor over all ranks' parts.
        let specs = ModelParameters.specs(model.config)
        var first = Int32(specs.count)
        if let name = optimizer.firstNonFiniteGradient(), let i = specs.firstIndex(where: { $0.name == name }) { first = Int32(i) }
        if let world = mesh?.world, world.size > 1 {
            first = orAbort(step) { try world.allreduce(first, op: .min, label: "first non-finite gradient") }
        }
        var what: [String] = []
        if !loss.isFinite { what.append("the loss is \(loss)") }
        if !norm.isFinite { what.append("the gradient norm is \(norm)") }
        if Int(first) < specs.count {
            what.append("the first non-finite gradient is \(specs[Int(first)].name)'s")
        } else if !norm.isFinite {
            what.append("every gradient value is finite, but their squares overflow")
        }
        return "step \(step + 1): " + what.joined(separator: "; ")
    }

    /// Applies `training.on_nonfinite` to a step whose update was dropped. Returns why the run must stop (nil:
    /// it goes on).
    func handleNonFinite(_ problem: String, step: Int) -> String? {
        let t = config.training
        if t.onNonfinite == "stop" {
            return "\(problem): no update applied; stopping (training.on_nonfinite = \"stop\")"
        }
        skippedSteps += 1
        consecutiveSkips += 1
        if isRank0 { log("tessera: \(problem): update skipped (\(consecutiveSkips) in a row, \(skippedSteps) in all)") }
        if consecutiveSkips >= t.maxSkipped {
            return "\(problem): \(consecutiveSkips) steps in a row skipped as non-finite; stopping (training.max_skipped = \(t.maxSkipped))"
        }
        return nil
    }
}
