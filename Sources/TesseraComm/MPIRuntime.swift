// The MPI process: initialisation with MPI_THREAD_MULTIPLE (later capabilities run communication and
// checkpoint threads), and world rank and size. MPI_COMM_WORLD returns error codes
// (MPI_ERRORS_RETURN) for the communication layer to turn into Swift errors. Works under `mpirun` and as a
// plain process (MPI singleton).

import CMPI
import Foundation

public final class MPIRuntime: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// The thread level MPI granted (3 = MPI_THREAD_MULTIPLE).
    public let threadLevel: Int32
    public let world: MPI_Comm

    public var threadLevelName: String {
        switch threadLevel {
        case Int32(MPI_THREAD_SINGLE): return "MPI_THREAD_SINGLE"
        case Int32(MPI_THREAD_FUNNELED): return "MPI_THREAD_FUNNELED"
        case Int32(MPI_THREAD_SERIALIZED): return "MPI_THREAD_SERIALIZED"
        case Int32(MPI_THREAD_MULTIPLE): return "MPI_THREAD_MULTIPLE"
        default: return "unknown(\(threadLevel))"
        }
    }

    /// Initialises MPI. Before that, selects Open MPI's fast shared-memory path (no CMA single copy,
    /// 3–4× faster here) unless the user chose a mechanism explicitly.
    public init() {
        Self.userChoseSingleCopy = getenv("OMPI_MCA_btl_vader_single_copy_mechanism") != nil
        setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0)
        // Larger shared-memory fragments and queue: a multi-MiB message moves in far fewer progress calls, which
        // matters because this MPI progresses only inside MPI calls (ring attention polls between kernel
        // blocks). Measured: ring transfers alone about 2x faster, and their overlap at 4096 tokens from
        // 55–99% to 97–100% forward (docs/sequence-parallel.md). User settings win.
        for (key, value) in Self.sharedMemoryTuning { setenv(key, value, 0) }
        var provided: Int32 = -1
        MPI_Init_thread(nil, nil, Int32(MPI_THREAD_MULTIPLE), &provided)
        threadLevel = provided
        world = tmpi_comm_world()
        MPI_Comm_set_errhandler(world, tmpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(world, &r)
        MPI_Comm_size(world, &s)
        rank = Int(r); size = Int(s)
    }

    public func finalize() { MPI_Finalize() }

    /// Open MPI shared-memory settings tessera applies unless the environment sets them.
    public static let sharedMemoryTuning = [("OMPI_MCA_btl_vader_max_send_size", "262144"),
                                            ("OMPI_MCA_btl_vader_fifo_size", "16777216")]

    nonisolated(unsafe) static var userChoseSingleCopy = getenv("OMPI_MCA_btl_vader_single_copy_mechanism") != nil

    /// The shared-memory single-copy setting in force (for reports).
    public static var singleCopyMechanism: String {
        let env = ProcessInfo.processInfo.environment
        let v = env["OMPI_MCA_btl_vader_single_copy_mechanism"]
        let mechanism = userChoseSingleCopy && v != nil ? "\(v!) (from the environment)"
            : "none (set by tessera before MPI_Init; Open MPI's default CMA is 3-4x slower here)"
        return mechanism + "; vader fragments \(env["OMPI_MCA_btl_vader_max_send_size"] ?? "default") B, "
            + "queue \(env["OMPI_MCA_btl_vader_fifo_size"] ?? "default") B"
    }
}

extension MPIRuntime {
    /// The world as a communicator.
    public var worldCommunicator: Communicator { Communicator(handle: world, name: "world", worldRank: rank) }

    /// Ends the whole job: prints `message` (prefixed "tessera: ") to stderr and calls MPI_Abort, which makes
    /// mpirun stop every rank with a non-zero exit.
    public static func abort(_ message: String, code: Int32 = 70) -> Never {
        FileHandle.standardError.write(Data("tessera: \(message)\n".utf8))
        fflush(nil)
        MPI_Abort(tmpi_comm_world(), code)
        exit(code)
    }
}

extension MPIRuntime {
    /// The ranks of this job on this host (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED: the ranks that can
    /// share memory with this one), 1 for a plain process. Collective over the world: every rank must call it.
    public func ranksOnThisHost() throws -> Int {
        guard size > 1 else { return 1 }
        var info: MPI_Info? = nil
        try check(MPI_Info_create(&info), "MPI_Info_create", rank: rank)
        defer { MPI_Info_free(&info) }
        var local: MPI_Comm? = nil
        try check(MPI_Comm_split_type(world, Int32(MPI_COMM_TYPE_SHARED), Int32(rank), info, &local),
                  "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) (ranks on this host)", rank: rank)
        defer { MPI_Comm_free(&local) }
        var n: Int32 = 0
        try check(MPI_Comm_size(local, &n), "MPI_Comm_size (ranks on this host)", rank: rank)
        return Int(n)
    }
}
