// The checkpoint format (docs/checkpointing.md). A checkpoint is a directory per step:
//
//   <checkpoint.dir>/step-000120/
//       rank-0.safetensors, rank-1.safetensors, ...   each rank's shards (parameters, AdamW moments)
//       manifest.json                                  every global tensor (name, shape, dtype) and every
//                                                      shard: which flat range of which tensor, in which
//                                                      file at which bytes, with its checksum; plus the
//                                                      step, mesh, config and data position
//   <checkpoint.dir>/latest                            "step-000120": the newest complete checkpoint
//
// A shard is a flat element range of a global tensor (row-major), so any layout's shard of a tensor (a
// pipeline stage's whole tensor, a ZeRO-1 partition's piece of it) is described the same way, and a new
// layout reads its own ranges from whichever saved shards overlap them.

import Foundation

public struct CheckpointManifest: Codable, Equatable, Sendable {
    public static let formatName = "tessera-checkpoint-1"

    public struct Tensor: Codable, Equatable, Sendable {
        public var name: String, shape: [Int], dtype: String
        public init(name: String, shape: [Int], dtype: String = "F32") { self.name = name; self.shape = shape; self.dtype = dtype }
        public var count: Int { shape.reduce(1, *) }
    }

    /// One shard: elements start..<start+count of `kind` (param, exp_avg, exp_avg_sq) of tensor `tensor`,
    /// stored in `file` at bytes byteOffset..<byteOffset+4·count (from the file's start), with `checksum`.
    public struct Shard: Codable, Equatable, Sendable {
        public var tensor: String, kind: String, start: Int, count: Int
        public var rank: Int, file: String, byteOffset: Int, checksum: String
        public init(tensor: String, kind: String, start: Int, count: Int, rank: Int, file: String, byteOffset: Int, checksum: String) {
            self.tensor = tensor; self.kind = kind; self.start = start; self.count = count
            self.rank = rank; self.file = file; self.byteOffset = byteOffset; self.checksum = checksum
        }
        public var range: Range<Int> { start..<(start + count) }
    }

    public var format = CheckpointManifest.formatName
    public var step: Int
    public var tensors: [Tensor]
    public var shards: [Shard]
    /// The layout that wrote it: "pp", "dp", "ring", "ulysses", "zero".
    public var mesh: [String: Int]
    /// The config that wrote it (TOML text) and free-form state: data position, random state.
    public var config: String
    public var state: [String: String]

    public init(step: Int, tensors: [Tensor], shards: [Shard], mesh: [String: Int], config: String, state: [String: String]) {
        self.step = step; self.tensors = tensors; self.shards = shards; self.mesh = mesh; self.config = config; self.state = state
    }

    /// The shape of tensor `name`.
    public func tensor(_ name: String) -> Tensor? { tensors.first { $0.name == name } }
}

/// A 64-bit checksum over 8-byte words (FNV-style: h = (h ⊕ w) · p with p odd). Every step is a bijection
/// of the state, so any change to one word changes the result.
public enum Checksum {
    public static func hash(_ p: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        let prime: UInt64 = 0x100000001b3
        let words = p.count / 8
        for i in 0..<words { h = (h ^ p.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) &* prime }
        for i in (8 * words)..<p.count { h = (h ^ UInt64(p[i])) &* prime }
        return h ^ UInt64(p.count)
    }

    public static func hex(_ h: UInt64) -> String { String(h, radix: 16).leftPadded(16) }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

public struct CheckpointError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
