// The number format of the matrix products (`training.precision`). In bf16 every operand of a product
// (activations, weights, activation gradients) is rounded to bfloat16 before the product, which
// accumulates in float32; everything else (master weights, weight gradients, optimizer moments, the loss,
// softmax and normalisation statistics, the residual stream) stays float32, as under PyTorch's autocast.
//
// Operands are rounded in place where they are produced (a LayerNorm's output, the attention output, the
// GELU output, q/k/v) when nothing else reads the unrounded values; the residual stream's gradient, which
// keeps accumulating in float32, is rounded into a copy. The values are then exactly bf16 whatever storage
// holds them, so the product backend (ProductBackend.swift) can be an emulation (float32 sgemm on the rounded
// values, for CPUs without bf16 arithmetic) or oneDNN's bf16 matmul on the same inputs (docs/precision.md).

public enum Precision: String, Sendable, CaseIterable {
    case fp32, bf16

    /// What runs this precision's products here, for banners and benchmarks.
    public var productsDescription: String {
        switch self {
        case .fp32: return "fp32 products on OpenBLAS sgemm (\(BLAS.coreName))"
        case .bf16:
            switch ProductBackend.bf16 {
            case .onednn: return "bf16 operands, fp32 accumulation, on oneDNN's bf16 matmul (\(ProductBackend.reason))"
            case .emulated:
                return "bf16 operands, fp32 accumulation, emulated: rounded operands on OpenBLAS sgemm "
                    + "(\(ProductBackend.reason); runs at the fp32 rate)"
            }
        }
    }

    /// Bytes of one element of a product operand.
    public var operandBytes: Int { self == .bf16 ? 2 : 4 }

    /// Makes n floats valid operands of this precision's products: rounds them to bf16 in place in bf16,
    /// leaves them alone in fp32.
    @inline(__always)
    public func roundOperand(_ p: UnsafeMutablePointer<Float>, count n: Int) {
        if self == .bf16 { BF16.roundParallel(p, into: p, count: n) }
    }

    /// Copies n floats into `dst` as operands of this precision (rounded in bf16). Returns `dst`.
    @discardableResult
    public func operandCopy(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count n: Int)
        -> UnsafeMutablePointer<Float> {
        if self == .bf16 { BF16.roundParallel(src, into: dst, count: n) } else { dst.update(from: src, count: n) }
        return dst
    }
}
