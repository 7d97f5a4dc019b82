// A communicator and the calls the runtime makes on it: typed over contiguous buffers (pointer + count,
// no copies), errors as Swift `MPIError`s, every blocking call watched by the watchdog and timed as
// communication wait on the rank's timeline. Non-blocking forms (Requests.swift) return `Request`s.
// Ranks inside a communicator are the communicator's own; the process mesh (Mesh.swift) makes them.

import CMPI
import TesseraTimeline

/// Element types MPI moves.
public protocol MPIScalar { static var mpiType: MPI_Datatype { get } }
extension Float: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_float() } }
extension Double: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_double() } }
extension Int32: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_int32() } }
extension Int64: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_int64() } }
extension UInt8: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_byte() } }
/// bf16 payloads (raw bit patterns).
extension UInt16: MPIScalar { public static var mpiType: MPI_Datatype { tmpi_uint16() } }

public enum ReduceOp: Sendable {
    case sum, max, min
    var handle: MPI_Op {
        switch self { case .sum: tmpi_op_sum(); case .max: tmpi_op_max(); case .min: tmpi_op_min() }
    }
}

public final class Communicator: @unchecked Sendable {
    public let handle: MPI_Comm
    /// This process's rank in the communicator and the communicator's size.
    public let rank: Int, size: Int
    /// A short name for messages and traces ("world", "data", "ring", ...).
    public let name: String
    /// This process's rank in MPI_COMM_WORLD (for messages).
    public let worldRank: Int
    /// Bytes this rank has sent to other ranks point to point and in all-to-alls (for traffic reports).
    public var bytesSent = 0
    /// For a communicator used by a background thread (the checkpoint writer): its calls are not recorded
    /// in the Timeline and arm no watchdog deadline, both of which belong to the training thread.
    public var background = false

    public init(handle: MPI_Comm, name: String, worldRank: Int) {
        self.handle = handle; self.name = name; self.worldRank = worldRank
        MPI_Comm_set_errhandler(handle, tmpi_errors_return())
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(handle, &r); MPI_Comm_size(handle, &s)
        rank = Int(r); size = Int(s)
    }

    /// Splits into sub-communicators: processes with equal `color` share one, ordered by `key`.
    public func split(color: Int, key: Int, name: String) throws -> Communicator {
        var out: MPI_Comm? = nil
        try blocking("MPI_Comm_split", name) { MPI_Comm_split(handle, Int32(color), Int32(key), &out) }
        return Communicator(handle: out!, name: name, worldRank: worldRank)
    }

    // MARK: plumbing

    /// Runs one blocking MPI call: armed watchdog, timed as communication wait, error checked.
    /// Nothing is formatted unless a message or a trace event needs it.
    @inline(__always)
    func blocking(_ op: StaticString, _ label: String = "", _ call: () -> Int32) throws {
        let dog = background ? nil : Watchdog.shared, token = dog?.arm(op, label, self)
        let t0 = nowNs()
        let rc = call()
        let t1 = nowNs()
        if let token { dog!.disarm(token) }
        if !background { Timeline.shared.commWait(Self.describe(op, label), beginNs: t0, endNs: t1) }
        if rc != MPI_SUCCESS { try check(rc, "\(Self.describe(op, label)) on communicator '\(name)'", rank: worldRank) }
    }

    static func describe(_ op: StaticString, _ label: String) -> String {
        label.isEmpty ? "\(op)" : "\(op) \(label)"
    }

    @inline(__always) func n32(_ n: Int, _ op: String) throws -> Int32 {
        guard n >= 0 && n <= Int(Int32.max) else {
            throw MPIError(operation: op, rank: worldRank, code: -1, message: "count \(n) outside MPI's 32-bit range")
        }
        return Int32(n)
    }

    @inline(__always) func raw<T>(_ p: UnsafePointer<T>) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(mutating: p)
    }

    // MARK: collectives (blocking)

    /// In-place allreduce of `count` elements.
    public func allreduce<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, op: ReduceOp = .sum,
                                        label: String = "") throws {
        let n = try n32(count, "MPI_Allreduce")
        try blocking("MPI_Allreduce", label) { MPI_Allreduce(tmpi_in_place(), buf, n, T.mpiType, op.handle, handle) }
    }

    public func allreduce<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                        op: ReduceOp = .sum, label: String = "") throws {
        let n = try n32(count, "MPI_Allreduce")
        try blocking("MPI_Allreduce", label) { MPI_Allreduce(raw(send), recv, n, T.mpiType, op.handle, handle) }
    }

    /// Allreduce of one value (losses, norms, flags).
    public func allreduce<T: MPIScalar>(_ value: T, op: ReduceOp = .sum, label: String = "") throws -> T {
        var v = value
        try withUnsafeMutablePointer(to: &v) { try allreduce($0, count: 1, op: op, label: label) }
        return v
    }

    /// Reduce-scatter with equal blocks: rank r receives the reduction of block r (`count` elements).
    public func reduceScatter<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                            op: ReduceOp = .sum, label: String = "") throws {
        let n = try n32(count, "MPI_Reduce_scatter_block")
        try blocking("MPI_Reduce_scatter_block", label) {
            MPI_Reduce_scatter_block(raw(send), recv, n, T.mpiType, op.handle, handle)
        }
    }

    /// Reduce-scatter with per-rank counts (the v-variant): rank r receives `counts[r]` elements.
    public func reduceScatter<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, counts: [Int],
                                            op: ReduceOp = .sum, label: String = "") throws {
        var c = try counts.map { try n32($0, "MPI_Reduce_scatter") }
        try blocking("MPI_Reduce_scatter", label) {
            MPI_Reduce_scatter(raw(send), recv, &c, T.mpiType, op.handle, handle)
        }
    }

    /// Allgather of equal blocks: recv holds size × count elements, block r from rank r.
    public func allgather<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                        label: String = "") throws {
        let n = try n32(count, "MPI_Allgather")
        try blocking("MPI_Allgather", label) { MPI_Allgather(raw(send), n, T.mpiType, recv, n, T.mpiType, handle) }
    }

    /// In-place allgather with per-rank counts and displacements: each rank's block already sits at its
    /// displacement in `buf`.
    public func allgather<T: MPIScalar>(inPlace buf: UnsafeMutablePointer<T>, counts: [Int], displacements: [Int],
                                        label: String = "") throws {
        var c = try counts.map { try n32($0, "MPI_Allgatherv") }, d = try displacements.map { try n32($0, "MPI_Allgatherv") }
        try blocking("MPI_Allgatherv", label) {
            MPI_Allgatherv(tmpi_in_place(), 0, T.mpiType, buf, &c, &d, T.mpiType, handle)
        }
    }

    /// Allgather with per-rank counts into `recv` at `displacements`.
    public func allgather<T: MPIScalar>(send: UnsafePointer<T>, count: Int, recv: UnsafeMutablePointer<T>,
                                        counts: [Int], displacements: [Int], label: String = "") throws {
        let n = try n32(count, "MPI_Allgatherv")
        var c = try counts.map { try n32($0, "MPI_Allgatherv") }, d = try displacements.map { try n32($0, "MPI_Allgatherv") }
        try blocking("MPI_Allgatherv", label) {
            MPI_Allgatherv(raw(send), n, T.mpiType, recv, &c, &d, T.mpiType, handle)
        }
    }

    /// All-to-all of equal blocks: block j of send goes to rank j; block i of recv came from rank i.
    public func alltoall<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                       label: String = "") throws {
        let n = try n32(count, "MPI_Alltoall")
        bytesSent += (size - 1) * count * MemoryLayout<T>.stride
        try blocking("MPI_Alltoall", label) { MPI_Alltoall(raw(send), n, T.mpiType, recv, n, T.mpiType, handle) }
    }

    /// All-to-all with per-rank counts and displacements (elements).
    public func alltoall<T: MPIScalar>(send: UnsafePointer<T>, sendCounts: [Int], sendDisplacements: [Int],
                                       recv: UnsafeMutablePointer<T>, recvCounts: [Int], recvDisplacements: [Int],
                                       label: String = "") throws {
        var sc = try sendCounts.map { try n32($0, "MPI_Alltoallv") }, sd = try sendDisplacements.map { try n32($0, "MPI_Alltoallv") }
        var rc = try recvCounts.map { try n32($0, "MPI_Alltoallv") }, rd = try recvDisplacements.map { try n32($0, "MPI_Alltoallv") }
        bytesSent += (sendCounts.reduce(0, +) - sendCounts[rank]) * MemoryLayout<T>.stride
        try blocking("MPI_Alltoallv", label) {
            MPI_Alltoallv(raw(send), &sc, &sd, T.mpiType, recv, &rc, &rd, T.mpiType, handle)
        }
    }

    public func broadcast<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, root: Int, label: String = "") throws {
        let n = try n32(count, "MPI_Bcast")
        try blocking("MPI_Bcast", label) { MPI_Bcast(buf, n, T.mpiType, Int32(root), handle) }
    }

    public func barrier(label: String = "") throws {
        try blocking("MPI_Barrier", label) { MPI_Barrier(handle) }
    }

    // MARK: point to point (blocking)

    public func send<T: MPIScalar>(_ buf: UnsafePointer<T>, count: Int, to dest: Int, tag: Int, label: String = "") throws {
        let n = try n32(count, "MPI_Send")
        if dest != rank { bytesSent += count * MemoryLayout<T>.stride }
        try blocking("MPI_Send", label.isEmpty ? "to \(dest) tag \(tag)" : label) { MPI_Send(raw(buf), n, T.mpiType, Int32(dest), Int32(tag), handle) }
    }

    /// Receives up to `count` elements; returns the number received.
    @discardableResult
    public func recv<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, from source: Int, tag: Int,
                                   label: String = "") throws -> Int {
        let n = try n32(count, "MPI_Recv")
        var status = MPI_Status()
        try blocking("MPI_Recv", label.isEmpty ? "from \(source) tag \(tag)" : label) {
            MPI_Recv(buf, n, T.mpiType, Int32(source), Int32(tag), handle, &status)
        }
        var got: Int32 = 0
        MPI_Get_count(&status, T.mpiType, &got)
        return Int(got)
    }

    public func sendrecv<T: MPIScalar>(send: UnsafePointer<T>, sendCount: Int, to dest: Int, sendTag: Int,
                                       recv: UnsafeMutablePointer<T>, recvCount: Int, from source: Int, recvTag: Int,
                                       label: String = "") throws {
        let sn = try n32(sendCount, "MPI_Sendrecv"), rn = try n32(recvCount, "MPI_Sendrecv")
        if dest != rank { bytesSent += sendCount * MemoryLayout<T>.stride }
        try blocking("MPI_Sendrecv", label.isEmpty ? "to \(dest) from \(source)" : label) {
            MPI_Sendrecv(raw(send), sn, T.mpiType, Int32(dest), Int32(sendTag), recv, rn, T.mpiType, Int32(source),
                         Int32(recvTag), handle, tmpi_status_ignore())
        }
    }
}
