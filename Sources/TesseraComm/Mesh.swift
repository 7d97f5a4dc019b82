// The process mesh: pipeline × data × sequence, and inside sequence ring × Ulysses. Built once from the
// parallelism degrees with MPI_Comm_split; every rank knows its coordinate and its groups, and nothing
// else in the runtime computes ranks by hand.
//
// A mesh index is a position in the mesh: with the default order, index = ((pp · D + dp) · R + ring) · U + ulysses
// (the sequence dimensions innermost, the pipeline outermost). `MeshShape.order` lists the dimensions innermost
// first and may be any permutation; consecutive indices share a host first. Which world rank takes which index is
// the placement's choice (Placement.swift in TesseraTopology); without one, world rank = mesh index.

import CMPI
import Foundation

/// One dimension of the mesh.
public enum MeshDimension: String, Sendable, CaseIterable, CustomStringConvertible {
    case ulysses, ring, dp, pp
    public var description: String { rawValue }

    /// "pp, dp, ring, ulysses" → the four dimensions in that order; nil unless each is named exactly once.
    public static func order(_ text: String) -> [MeshDimension]? {
        let dims = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { MeshDimension(rawValue: $0.trimmingCharacters(in: .whitespaces)) }
        guard dims.count == 4, dims.allSatisfy({ $0 != nil }), Set(dims.map { $0! }).count == 4 else { return nil }
        return dims.map { $0! }
    }
}

public struct MeshShape: Sendable, Equatable, CustomStringConvertible {
    public var pp: Int, dp: Int, ring: Int, ulysses: Int
    /// The dimensions from innermost (consecutive mesh indices differ in it) to outermost.
    public var order: [MeshDimension]
    public static let defaultOrder: [MeshDimension] = [.ulysses, .ring, .dp, .pp]

    public init(pp: Int = 1, dp: Int = 1, ring: Int = 1, ulysses: Int = 1, order: [MeshDimension] = MeshShape.defaultOrder) {
        precondition(Set(order).count == 4 && order.count == 4, "a mesh order names each of the four dimensions once")
        self.pp = pp; self.dp = dp; self.ring = ring; self.ulysses = ulysses; self.order = order
    }
    public var size: Int { pp * dp * ring * ulysses }
    public var description: String { "pp \(pp) × dp \(dp) × ring \(ring) × ulysses \(ulysses)" }

    public func degree(_ d: MeshDimension) -> Int {
        switch d { case .pp: pp; case .dp: dp; case .ring: ring; case .ulysses: ulysses }
    }
    /// The dimensions of more than one rank, innermost first ("ulysses, ring, dp, pp" when all are split).
    public var orderDescription: String {
        let split = order.filter { degree($0) > 1 }
        return split.isEmpty ? "one rank" : split.map(\.rawValue).joined(separator: " inside ")
    }

    /// The coordinate of a mesh index (the world rank when there is no placement).
    public func coordinate(of index: Int) -> MeshCoordinate {
        precondition(index >= 0 && index < size, "mesh index \(index) outside a mesh of \(size)")
        var r = index, c = MeshCoordinate(pp: 0, dp: 0, ring: 0, ulysses: 0)
        for d in order {
            let n = degree(d)
            c[d] = r % n; r /= n
        }
        return c
    }

    /// The mesh index of a coordinate.
    public func rank(of c: MeshCoordinate) -> Int {
        var index = 0
        for d in order.reversed() { index = index * degree(d) + c[d] }
        return index
    }
}

public struct MeshCoordinate: Sendable, Equatable, CustomStringConvertible {
    public var pp: Int, dp: Int, ring: Int, ulysses: Int
    public init(pp: Int, dp: Int, ring: Int, ulysses: Int) { self.pp = pp; self.dp = dp; self.ring = ring; self.ulysses = ulysses }
    public var description: String { "(pp \(pp), dp \(dp), ring \(ring), ulysses \(ulysses))" }
    /// Pipeline stage 0.
    public var isFirstStage: Bool { pp == 0 }
    /// Data, ring and Ulysses coordinate 0: the first rank of its group of replicas (same parameters).
    public var isFirstReplica: Bool { dp == 0 && ring == 0 && ulysses == 0 }

    public subscript(_ d: MeshDimension) -> Int {
        get { switch d { case .pp: pp; case .dp: dp; case .ring: ring; case .ulysses: ulysses } }
        set { switch d { case .pp: pp = newValue; case .dp: dp = newValue; case .ring: ring = newValue; case .ulysses: ulysses = newValue } }
    }
}

public final class ProcessMesh: @unchecked Sendable {
    public let shape: MeshShape
    public let coordinate: MeshCoordinate
    public let world: Communicator
    /// Ranks that differ only in pipeline stage (stage i talks to stage i ± 1 here).
    public let pipeline: Communicator
    /// Data-parallel replicas of the same shard (same stage, same sequence slice).
    public let data: Communicator
    /// Ranks that share one sequence (ring × Ulysses).
    public let sequence: Communicator
    public let ring: Communicator
    public let ulysses: Communicator
    /// Ranks holding the same parameters (one pipeline stage): data × sequence. Gradients are reduced here.
    public let replicas: Communicator
    /// The first and last pipeline stage of one pipeline (same data and sequence coordinate): both hold the
    /// tied token embedding and sum its gradient here. A middle stage's group is itself alone.
    public let embedding: Communicator
    /// Every rank, for the checkpoint writer threads' collectives (gathering shard records in the background):
    /// a communicator of their own, so they never interleave with the training thread's.
    public let checkpoint: Communicator

    /// The mesh index of each world rank (identity without a placement).
    public let indexOfWorldRank: [Int]
    /// How the ranks were placed on hosts, for the banner (set by whoever chose the placement).
    public var placementReport: String?

    /// Collective over `world`: every rank must call it with the same shape and placement. Throws a message naming
    /// the `-np` the shape needs if the world size differs (before any other communication). `placement[w]` is
    /// the mesh index of world rank w (a permutation keeping world rank 0 at index 0, which writes the logs);
    /// nil = world rank order.
    public init(world: Communicator, shape: MeshShape, placement: [Int]? = nil) throws {
        guard world.size == shape.size else { throw MeshError.wrongSize(shape: shape, worldSize: world.size) }
        let index = placement ?? Array(0..<shape.size)
        precondition(index.count == shape.size && Set(index).count == shape.size && index.allSatisfy({ $0 >= 0 && $0 < shape.size })
                     && index[0] == 0, "a placement is a permutation of the mesh indices with world rank 0 at index 0")
        self.shape = shape
        self.world = world
        indexOfWorldRank = index
        let c = shape.coordinate(of: index[world.rank])
        coordinate = c
        let (P, D, R, U) = (shape.pp, shape.dp, shape.ring, shape.ulysses)
        // color: the coordinates that stay fixed; key: the position along the varying ones.
        pipeline = try world.split(color: (c.dp * R + c.ring) * U + c.ulysses, key: c.pp, name: "pipeline")
        data = try world.split(color: (c.pp * R + c.ring) * U + c.ulysses, key: c.dp, name: "data")
        sequence = try world.split(color: c.pp * D + c.dp, key: c.ring * U + c.ulysses, name: "sequence")
        ring = try world.split(color: (c.pp * D + c.dp) * U + c.ulysses, key: c.ring, name: "ring")
        ulysses = try world.split(color: (c.pp * D + c.dp) * R + c.ring, key: c.ulysses, name: "ulysses")
        replicas = try world.split(color: c.pp, key: (c.dp * R + c.ring) * U + c.ulysses, name: "replicas")
        let ends = c.pp == 0 || c.pp == P - 1
        embedding = try world.split(color: ends ? (c.dp * R + c.ring) * U + c.ulysses : D * R * U + world.rank,
                                    key: c.pp, name: "embedding")
        checkpoint = try world.split(color: 0, key: world.rank, name: "checkpoint")
        checkpoint.background = true
    }

    /// The world rank at a coordinate.
    public func worldRank(of c: MeshCoordinate) -> Int { worldRankOfIndex[shape.rank(of: c)] }
    private var worldRankOfIndex: [Int] {
        var w = [Int](repeating: 0, count: shape.size)
        for (rank, index) in indexOfWorldRank.enumerated() { w[index] = rank }
        return w
    }

    /// World ranks of the members of each group of this rank, in the group's rank order, for reports and tests.
    public func members(of group: Communicator) -> [Int] {
        let s = shape, c = coordinate, world = worldRankOfIndex
        var out: [Int] = []
        for p in 0..<s.pp { for d in 0..<s.dp { for g in 0..<s.ring { for u in 0..<s.ulysses {
            let o = MeshCoordinate(pp: p, dp: d, ring: g, ulysses: u)
            let same: Bool
            switch group.name {
            case "pipeline": same = o.dp == c.dp && o.ring == c.ring && o.ulysses == c.ulysses
            case "data": same = o.pp == c.pp && o.ring == c.ring && o.ulysses == c.ulysses
            case "sequence": same = o.pp == c.pp && o.dp == c.dp
            case "ring": same = o.pp == c.pp && o.dp == c.dp && o.ulysses == c.ulysses
            case "ulysses": same = o.pp == c.pp && o.dp == c.dp && o.ring == c.ring
            case "replicas": same = o.pp == c.pp
            case "embedding":
                let ends = { (pp: Int) in pp == 0 || pp == s.pp - 1 }
                same = ends(c.pp) ? ends(o.pp) && o.dp == c.dp && o.ring == c.ring && o.ulysses == c.ulysses : o == c
            default: same = true
            }
            if same { out.append(world[s.rank(of: o)]) }
        }}}}
        return out
    }

    // MARK: positions

    /// Runs the first pipeline stage (the embeddings).
    public var isFirstStage: Bool { coordinate.isFirstStage }
    /// The first of the ranks holding the same parameters (`replicas` rank 0, data, ring and Ulysses
    /// coordinate 0): it writes the unsharded tensors of a checkpoint, and its pipeline gathers the whole
    /// model to world rank 0.
    public var isFirstReplica: Bool { coordinate.isFirstReplica }

    /// The groups `tessera mpi-check` exercises (the embedding group is a pair of pipeline ends, checked by
    /// the pipeline tests' gradients).
    public var groups: [Communicator] { [pipeline, data, sequence, ring, ulysses, replicas] }
}

public enum MeshError: Error, CustomStringConvertible {
    case wrongSize(shape: MeshShape, worldSize: Int)
    public var description: String {
        switch self {
        case let .wrongSize(shape, worldSize):
            return "the config describes a mesh of \(shape.size) rank(s) (\(shape)), but this job has \(worldSize): "
                + "run it with mpirun -np \(shape.size) (or Launch/tessera-run, which computes it)"
        }
    }
}

/// A rank's place on a ring of `size` ranks: where it sends (`next`), where it receives from (`prev`), and whose
/// block it holds after s hops. Ring attention and the pipeline engine take every neighbour from here.
public struct RingPosition: Sendable, Equatable {
    public let rank: Int, size: Int
    public init(rank: Int, size: Int) {
        precondition(size >= 1 && rank >= 0 && rank < size, "rank \(rank) outside a ring of \(size)")
        self.rank = rank; self.size = size
    }
    public var next: Int { (rank + 1) % size }
    public var prev: Int { (rank - 1 + size) % size }
    /// The rank whose block this rank holds after `hops` steps of passing blocks to `next`.
    public func source(afterHops hops: Int) -> Int { ((rank - hops) % size + size) % size }
    /// The same when blocks pass the other way, to `prev` (ring attention's backward).
    public func sourceFlowingBack(afterHops hops: Int) -> Int { (rank + hops) % size }
}

extension Communicator {
    /// This rank's place when the group's ranks form a ring in rank order.
    public var ringPosition: RingPosition { RingPosition(rank: rank, size: size) }
}

/// Every message tag of the runtime's point-to-point protocols, in one place. Tags only need to be unique
/// within one communicator and one protocol's messages in flight at once; each protocol runs on its own group.
public enum MessageTag {
    /// The smallest MPI_TAG_UB the standard guarantees.
    public static let upperBound = 32767

    /// Ring attention (ring group), per layer: key/value blocks of the forward, of the backward, and the
    /// key/value gradient accumulators travelling back.
    public static func ringForwardKV(layer: Int) -> Int { layer * 4 }
    public static func ringBackwardKV(layer: Int) -> Int { layer * 4 + 1 }
    public static func ringBackwardGradient(layer: Int) -> Int { layer * 4 + 2 }

    /// The pipeline (pipeline group): the activation (forward) or its gradient (backward) of micro-batch `mb`
    /// addressed to virtual stage `vs` of `virtualStages`; distinct for every message of a step, so they may
    /// arrive in any order.
    public static func pipeline(microbatch mb: Int, virtualStage vs: Int, backward: Bool, virtualStages: Int) -> Int {
        (mb * virtualStages + vs) * 2 + (backward ? 1 : 0)
    }

    /// Gathering every stage's tensors to the first stage (pipeline group; no step's messages are in flight).
    public static let gatherStages = 7000

    /// Measuring the links between hosts before the mesh exists (world communicator, nothing else in flight).
    public static let linkProbe = 7100

    /// `tessera mpi-check`'s point-to-point probes (any group, nothing else in flight): probe `n` is tag n.
    public static func selfCheck(_ probe: Int) -> Int { probe }
}
