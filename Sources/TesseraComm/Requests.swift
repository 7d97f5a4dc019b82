// Non-blocking communication. Each call returns a `Request`; `wait` blocks (watched and timed as
// communication wait), `test` polls without blocking and also drives MPI's progress engine, which on
// this MPI advances non-blocking collectives only inside MPI calls. Buffers passed here must stay
// valid and untouched until the request completes (FloatBuffer / ParameterSet storage do).
// Count and displacement arrays of the v-variants are copied into the request, which owns them.

import CMPI
import Foundation
import TesseraTimeline

public final class Request: @unchecked Sendable {
    var handle: MPI_Request?
    public let label: String
    package let comm: Communicator
    let issuedNs: UInt64
    public private(set) var isComplete = false
    /// When the request was seen complete (by wait or test).
    public private(set) var completedNs: UInt64 = 0
    private var owned: [UnsafeMutablePointer<Int32>] = []

    init(comm: Communicator, label: String) {
        self.comm = comm; self.label = label; issuedNs = nowNs()
    }
    deinit { for p in owned { p.deallocate() } }

    /// A copy of `values` as Int32s that lives as long as the request.
    func own(_ values: [Int]) throws -> UnsafeMutablePointer<Int32> {
        let p = UnsafeMutablePointer<Int32>.allocate(capacity: max(values.count, 1))
        for (i, v) in values.enumerated() { p[i] = try comm.n32(v, label) }
        owned.append(p)
        return p
    }

    private func finished() {
        isComplete = true; completedNs = nowNs()
        if !comm.background { Timeline.shared.commInFlight(label, beginNs: issuedNs, endNs: completedNs) }
    }

    /// Blocks until the operation completes.
    public func wait() throws {
        if isComplete { return }
        let dog = comm.background ? nil : Watchdog.shared, token = dog?.arm("MPI_Wait for", label, comm)
        let t0 = nowNs()
        let rc = MPI_Wait(&handle, tmpi_status_ignore())
        let t1 = nowNs()
        if let token { dog!.disarm(token) }
        if !comm.background { Timeline.shared.commWait("wait: \(label)", beginNs: t0, endNs: t1) }
        try check(rc, "MPI_Wait(\(label)) on communicator '\(comm.name)'", rank: comm.worldRank)
        finished()
    }

    /// Waits by polling with sleeps in between (so the CPU stays free for others, e.g. a rank that calibrates while this
    /// one waits); armed on the watchdog like `wait` unless `watched` is false (a wait whose length is the work of
    /// another rank, not the network's).
    public func sleepWait(pollMicroseconds: UInt32 = 200, watched: Bool = true) throws {
        let dog = watched && !comm.background ? Watchdog.shared : nil, token = dog?.arm("MPI_Test (sleeping) for", label, comm)
        defer { if let token { dog!.disarm(token) } }
        while try !test() { usleep(pollMicroseconds) }
    }

    /// True when complete; never blocks.
    @discardableResult
    public func test() throws -> Bool {
        if isComplete { return true }
        var flag: Int32 = 0
        try check(MPI_Test(&handle, &flag, tmpi_status_ignore()), "MPI_Test(\(label))", rank: comm.worldRank)
        if flag != 0 { finished() }
        return isComplete
    }

    public static func waitAll(_ requests: [Request]) throws {
        for r in requests { try r.wait() }
    }

    /// Polls every request once (drives progress); returns how many are complete.
    @discardableResult
    public static func testAll(_ requests: [Request]) throws -> Int {
        var done = 0
        for r in requests where try r.test() { done += 1 }
        return done
    }
}

extension Communicator {
    @inline(__always)
    private func start(_ label: String, _ call: (Request) throws -> Int32) throws -> Request {
        let r = Request(comm: self, label: label)
        let rc = try call(r)
        try check(rc, "\(label) on communicator '\(name)'", rank: worldRank)
        return r
    }

    /// A barrier that sleeps between polls instead of spinning: for ranks that only wait while others measure
    /// (spinning would take the CPU from them when ranks share cores). Watched like a blocking call.
    public func sleepingBarrier(label: String, pollMicroseconds: UInt32 = 200) throws {
        try ibarrier(label: label).sleepWait(pollMicroseconds: pollMicroseconds)
    }

    public func iallreduce<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, op: ReduceOp = .sum,
                                         label: String = "MPI_Iallreduce") throws -> Request {
        let n = try n32(count, label)
        return try start(label) { MPI_Iallreduce(tmpi_in_place(), buf, n, T.mpiType, op.handle, handle, &$0.handle) }
    }

    public func ireduceScatter<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                             op: ReduceOp = .sum, label: String = "MPI_Ireduce_scatter_block") throws -> Request {
        let n = try n32(count, label)
        return try start(label) {
            MPI_Ireduce_scatter_block(raw(send), recv, n, T.mpiType, op.handle, handle, &$0.handle)
        }
    }

    public func ireduceScatter<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, counts: [Int],
                                             op: ReduceOp = .sum, label: String = "MPI_Ireduce_scatter") throws -> Request {
        try start(label) { r in
            MPI_Ireduce_scatter(raw(send), recv, try r.own(counts), T.mpiType, op.handle, handle, &r.handle)
        }
    }

    public func iallgather<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                         label: String = "MPI_Iallgather") throws -> Request {
        let n = try n32(count, label)
        return try start(label) { MPI_Iallgather(raw(send), n, T.mpiType, recv, n, T.mpiType, handle, &$0.handle) }
    }

    public func iallgather<T: MPIScalar>(inPlace buf: UnsafeMutablePointer<T>, counts: [Int], displacements: [Int],
                                         label: String = "MPI_Iallgatherv") throws -> Request {
        try start(label) { r in
            MPI_Iallgatherv(tmpi_in_place(), 0, T.mpiType, buf, try r.own(counts), try r.own(displacements), T.mpiType,
                            handle, &r.handle)
        }
    }

    public func ialltoall<T: MPIScalar>(send: UnsafePointer<T>, recv: UnsafeMutablePointer<T>, count: Int,
                                        label: String = "MPI_Ialltoall") throws -> Request {
        let n = try n32(count, label)
        bytesSent += (size - 1) * count * MemoryLayout<T>.stride
        return try start(label) { MPI_Ialltoall(raw(send), n, T.mpiType, recv, n, T.mpiType, handle, &$0.handle) }
    }

    public func ialltoall<T: MPIScalar>(send: UnsafePointer<T>, sendCounts: [Int], sendDisplacements: [Int],
                                        recv: UnsafeMutablePointer<T>, recvCounts: [Int], recvDisplacements: [Int],
                                        label: String = "MPI_Ialltoallv") throws -> Request {
        bytesSent += (sendCounts.reduce(0, +) - sendCounts[rank]) * MemoryLayout<T>.stride
        return try start(label) { r in
            MPI_Ialltoallv(raw(send), try r.own(sendCounts), try r.own(sendDisplacements), T.mpiType, recv,
                           try r.own(recvCounts), try r.own(recvDisplacements), T.mpiType, handle, &r.handle)
        }
    }

    public func ibroadcast<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, root: Int,
                                         label: String = "MPI_Ibcast") throws -> Request {
        let n = try n32(count, label)
        return try start(label) { MPI_Ibcast(buf, n, T.mpiType, Int32(root), handle, &$0.handle) }
    }

    public func ibarrier(label: String = "MPI_Ibarrier") throws -> Request {
        try start(label) { MPI_Ibarrier(handle, &$0.handle) }
    }

    public func isend<T: MPIScalar>(_ buf: UnsafePointer<T>, count: Int, to dest: Int, tag: Int,
                                    label: String = "MPI_Isend") throws -> Request {
        let n = try n32(count, label)
        if dest != rank { bytesSent += count * MemoryLayout<T>.stride }
        return try start(label) { MPI_Isend(raw(buf), n, T.mpiType, Int32(dest), Int32(tag), handle, &$0.handle) }
    }

    /// Sends `rows` rows of `width` elements spaced `stride` apart (a block of columns of a row-major matrix)
    /// without packing them, through an MPI vector datatype; the receiver gets rows × width contiguous elements.
    public func isendRows<T: MPIScalar>(_ base: UnsafePointer<T>, rows: Int, width: Int, stride: Int, to dest: Int,
                                        tag: Int, label: String = "MPI_Isend (rows)") throws -> Request {
        var type: MPI_Datatype? = nil
        try check(MPI_Type_vector(try n32(rows, label), try n32(width, label), try n32(stride, label), T.mpiType, &type),
                  "MPI_Type_vector (\(label))", rank: worldRank)
        try check(MPI_Type_commit(&type), "MPI_Type_commit (\(label))", rank: worldRank)
        defer { MPI_Type_free(&type) }  // pending sends with the type complete normally
        if dest != rank { bytesSent += rows * width * MemoryLayout<T>.stride }
        return try start(label) { MPI_Isend(raw(base), 1, type, Int32(dest), Int32(tag), handle, &$0.handle) }
    }

    public func irecv<T: MPIScalar>(_ buf: UnsafeMutablePointer<T>, count: Int, from source: Int, tag: Int,
                                    label: String = "MPI_Irecv") throws -> Request {
        let n = try n32(count, label)
        return try start(label) { MPI_Irecv(buf, n, T.mpiType, Int32(source), Int32(tag), handle, &$0.handle) }
    }
}
