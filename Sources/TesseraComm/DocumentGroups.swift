// The sequence groups of variable-length training (`data.max_tokens_per_rank`): for every power of two g up to
// the number of replicas R, the replicas split into R / g aligned blocks of g consecutive ranks, each block a
// communicator of its own (MPI_Comm_split with color = rank / g, made once at start and reused every step).
// A long sequence runs as a ring over one block; its ring neighbours are the block communicator's.

public final class DocumentGroups: @unchecked Sendable {
    /// This rank among the replicas, and how many there are (a power of two).
    public let rank: Int, ranks: Int
    private let blocks: [Int: Communicator]

    init(replicas: Communicator) throws {
        rank = replicas.rank; ranks = replicas.size
        precondition(ranks & (ranks - 1) == 0, "document groups need a power-of-two number of replicas, not \(ranks)")
        var b: [Int: Communicator] = [:]
        var g = 2
        while g <= ranks {
            b[g] = try replicas.split(color: rank / g, key: rank % g, name: "documents \(g)")
            g *= 2
        }
        blocks = b
    }

    /// The block communicator of group size g (> 1) this rank belongs to.
    public func communicator(size g: Int) -> Communicator {
        guard let c = blocks[g] else { preconditionFailure("no document group of \(g) ranks among \(ranks)") }
        return c
    }
    /// This rank's place in its block of size g.
    public func rankInBlock(size g: Int) -> Int { rank % g }
    /// Every block communicator (for the bytes-sent report).
    public var communicators: [Communicator] { blocks.keys.sorted().map { blocks[$0]! } }
}

extension ProcessMesh {
    /// The document groups over this rank's replicas. Collective over them.
    public func documentGroups() throws -> DocumentGroups { try DocumentGroups(replicas: replicas) }
}
