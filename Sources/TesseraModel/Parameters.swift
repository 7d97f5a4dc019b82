import Foundation
// The model's parameters, declared once as global tensors with Hugging Face GPT-2 names, stored
// contiguously (one buffer for values, one of the same layout for gradients) in declaration order.
// A later shard is a slice of a global tensor; `Initializer` computes any element from the seed,
// the name and the element's global index alone, so every layout starts from the same model.

import TesseraKernels

/// How a parameter is initialised (GPT-2 / nanoGPT scheme).
public enum InitKind: Sendable, Equatable {
    case normal(std: Double)
    case zeros
    case ones
}

public struct ParameterSpec: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let initKind: InitKind
    public var count: Int { shape.reduce(1, *) }
    /// AdamW decoupled weight decay applies to tensors of 2 or more dimensions only.
    public var decays: Bool { shape.count >= 2 }
}

public enum GPTParameters {
    /// Every parameter of the model, in storage order, with Hugging Face GPT-2 names and layouts
    /// (Conv1D weights are [in, out]).
    public static func specs(_ c: TransformerConfig) -> [ParameterSpec] {
        let d = c.dModel
        let std = 0.02, residStd = 0.02 / (2.0 * Double(c.nLayer)).squareRoot()
        var s: [ParameterSpec] = [
            .init(name: "transformer.wte.weight", shape: [c.vocabSize, d], initKind: .normal(std: std)),
            .init(name: "transformer.wpe.weight", shape: [c.blockSize, d], initKind: .normal(std: std)),
        ]
        for l in 0..<c.nLayer {
            let p = "transformer.h.\(l)."
            s += [
                .init(name: p + "ln_1.weight", shape: [d], initKind: .ones),
                .init(name: p + "ln_1.bias", shape: [d], initKind: .zeros),
                .init(name: p + "attn.c_attn.weight", shape: [d, 3 * d], initKind: .normal(std: std)),
                .init(name: p + "attn.c_attn.bias", shape: [3 * d], initKind: .zeros),
                .init(name: p + "attn.c_proj.weight", shape: [d, d], initKind: .normal(std: residStd)),
                .init(name: p + "attn.c_proj.bias", shape: [d], initKind: .zeros),
                .init(name: p + "ln_2.weight", shape: [d], initKind: .ones),
                .init(name: p + "ln_2.bias", shape: [d], initKind: .zeros),
                .init(name: p + "mlp.c_fc.weight", shape: [d, 4 * d], initKind: .normal(std: std)),
                .init(name: p + "mlp.c_fc.bias", shape: [4 * d], initKind: .zeros),
                .init(name: p + "mlp.c_proj.weight", shape: [4 * d, d], initKind: .normal(std: residStd)),
                .init(name: p + "mlp.c_proj.bias", shape: [d], initKind: .zeros),
            ]
        }
        s += [
            .init(name: "transformer.ln_f.weight", shape: [d], initKind: .ones),
            .init(name: "transformer.ln_f.bias", shape: [d], initKind: .zeros),
        ]
        return s
    }
}

/// Named tensors in one contiguous buffer. Values and gradients use two instances of the same layout.
public final class ParameterSet: @unchecked Sendable {
    public let specs: [ParameterSpec]
    public let offsets: [Int]
    public let storage: FloatBuffer
    private let index: [String: Int]

    public init(specs: [ParameterSpec]) {
        self.specs = specs
        var offs: [Int] = [], total = 0
        for s in specs {
            offs.append(total)
            total += (s.count + 15) / 16 * 16  // keep every tensor 64-byte aligned
        }
        offsets = offs
        storage = FloatBuffer(total)
        var idx: [String: Int] = [:]
        for (i, s) in specs.enumerated() { idx[s.name] = i }
        index = idx
    }

    /// A parameter set with the same layout (for gradients and optimizer moments).
    public func sameLayout() -> ParameterSet { ParameterSet(specs: specs) }

    public var count: Int { storage.count }

    public subscript(name: String) -> UnsafeMutablePointer<Float> {
        guard let i = index[name] else { preconditionFailure("no parameter named '\(name)'") }
        return storage.ptr + offsets[i]
    }
    public func pointer(_ i: Int) -> UnsafeMutablePointer<Float> { storage.ptr + offsets[i] }
    /// Storage offset of a named tensor.
    public func offset(of name: String) -> Int {
        guard let i = index[name] else { preconditionFailure("no parameter named '\(name)'") }
        return offsets[i]
    }
    public func zero() { storage.zero() }

    /// Initialises every tensor from the seed and its name.
    public func initialize(seed: UInt64) {
        for (i, s) in specs.enumerated() {
            Initializer.fill(s, seed: seed, into: pointer(i), range: 0..<s.count)
        }
    }
}

/// Counter-based initialisation: element `i` of tensor `name` is a pure function of (seed, name, i).
public enum Initializer {
    /// Writes elements `range` (flat global indices) of `spec` into `dst[0..<range.count]`.
    public static func fill(_ spec: ParameterSpec, seed: UInt64, into dst: UnsafeMutablePointer<Float>, range: Range<Int>) {
        switch spec.initKind {
        case .zeros: dst.update(repeating: 0, count: range.count)
        case .ones: dst.update(repeating: 1, count: range.count)
        case .normal(let std):
            let key = mix(seed ^ fnv1a(spec.name))
            for (j, i) in range.enumerated() { dst[j] = Float(std * normal(key: key, index: UInt64(i))) }
        }
    }

    /// A standard normal variate from (key, index) by Box–Muller on two counter-hashed uniforms.
    @inlinable public static func normal(key: UInt64, index: UInt64) -> Double {
        let a = mix(key &+ index &* 0x9E37_79B9_7F4A_7C15)
        let b = mix(a ^ 0xD1B5_4A32_D192_ED03)
        let u1 = (Double(a >> 11) + 0.5) / 9_007_199_254_740_992.0  // (0, 1)
        let u2 = Double(b >> 11) / 9_007_199_254_740_992.0
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
    }

    /// splitmix64 finaliser.
    @inlinable public static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }
}

@usableFromInline func _log(_ x: Double) -> Double { Foundation.log(x) }
@usableFromInline func _cos(_ x: Double) -> Double { Foundation.cos(x) }
