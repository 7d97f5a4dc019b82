import Foundation

/// Learning rate at a step: linear warm-up to the peak, then cosine (or linear) decay to
/// peak·min_lr_ratio at the last step, or constant.
public struct LRSchedule: Sendable {
    public let peak: Double, minRatio: Double, warmup: Int, total: Int, decay: String

    public init(peak: Double, minRatio: Double, warmup: Int, total: Int, decay: String) {
        self.peak = peak; self.minRatio = minRatio; self.warmup = warmup; self.total = total; self.decay = decay
    }

    /// `step` is 0-based.
    public func lr(_ step: Int) -> Double {
        if step < warmup { return peak * Double(step + 1) / Double(warmup) }
        let minLR = peak * minRatio
        let span = max(1, total - warmup - 1)
        let p = min(1, Double(step - warmup) / Double(span))
        switch decay {
        case "cosine": return minLR + (peak - minLR) * 0.5 * (1 + cos(Double.pi * p))
        case "linear": return peak - (peak - minLR) * p
        default: return peak
        }
    }
}
