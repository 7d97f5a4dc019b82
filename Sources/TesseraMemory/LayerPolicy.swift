// What a transformer block keeps for its backward pass (`memory.policy`, `memory.layer_policy`).
//
//   keep       every tensor the backward reads stays in memory (the fastest, the most memory)
//   selective  the attention's inputs and outputs stay (q/k/v, output, log-sum-exp, Ulysses' head-sharded
//              copies); the cheap rest (LayerNorms, the attention projection, the MLP input and GELU) is
//              recomputed before the block's backward. Attention is never recomputed, so ring attention
//              sends no key/value block again (DistFlashAttn's rematerialisation-aware placement).
//   full       only the block input stays (it is the previous block's output, kept anyway); the whole
//              block, attention included, runs again before its backward
//   offload    the block's tensors go to the offload tier (a file in `memory.offload_dir`) as they are
//              produced and come back one layer ahead of the backward that reads them
// The residual stream (each block's input) and ln_f's tensors are kept under every policy.

public enum LayerPolicy: String, CaseIterable, Sendable, Equatable {
    case keep, full, selective, offload

    /// One policy per layer from a comma-separated list; `name*k` repeats a policy k times
    /// ("full*4,keep*2"). A single name applies to every layer. `key` names the setting in errors.
    public static func parseList(_ text: String, layers: Int, key: String) throws -> [LayerPolicy] {
        var out: [LayerPolicy] = []
        let names = LayerPolicy.allCases.map(\.rawValue).joined(separator: ", ")
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.trimmingSpaces.split(separator: "*", omittingEmptySubsequences: false).map { String($0).trimmingSpaces }
            guard parts.count <= 2, let p = LayerPolicy(rawValue: parts[0]) else {
                throw LayerPolicyError("\(key) = \"\(text)\": '\(item.trimmingSpaces)' is not a layer policy; expected one of \(names), optionally with *count")
            }
            var k = 1
            if parts.count == 2 {
                guard let n = Int(parts[1]), n >= 1 else {
                    throw LayerPolicyError("\(key) = \"\(text)\": '\(item.trimmingSpaces)' needs a positive count after '*'")
                }
                k = n
            }
            out += Array(repeating: p, count: k)
        }
        if out.count == 1 { return Array(repeating: out[0], count: layers) }
        guard out.count == layers else {
            throw LayerPolicyError("\(key) = \"\(text)\" gives \(out.count) layer policies; expected one, or one per layer (model.n_layer = \(layers))")
        }
        return out
    }

    /// "full*4,keep*2": the compact form of a list (how plans are printed).
    public static func describe(_ list: [LayerPolicy]) -> String {
        var runs: [(LayerPolicy, Int)] = []
        for p in list {
            if let last = runs.last, last.0 == p { runs[runs.count - 1].1 += 1 } else { runs.append((p, 1)) }
        }
        return runs.map { $0.1 == 1 ? $0.0.rawValue : "\($0.0.rawValue)*\($0.1)" }.joined(separator: ",")
    }
}

public struct LayerPolicyError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

extension Substring {
    var trimmingSpaces: String { String(self).trimmingSpaces }
}
extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
