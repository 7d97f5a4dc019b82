// The checks `tessera mpi-check` runs on one communicator: every call of the Swift MPI layer, each with
// data that identifies the sender, compared element by element.

import CMPI
import Foundation
import TesseraComm

/// Every call of the layer on one communicator. Rank r contributes `value(r, i)` = r · 1000 + i; the
/// expected results are computed here from those values.
struct Suite {
    let c: Communicator
    let runner: CheckRunner
    var n: Int { c.size }
    var r: Int { c.rank }
    var next: Int { c.ringPosition.next }
    var prev: Int { c.ringPosition.prev }

    func check(_ what: String, _ body: (inout Expectations) throws -> Void) throws {
        try runner.check("\(what) (\(c.name))", body)
    }

    func runAll() throws {
        try allreduces()
        try reduceScatterBlock(.blocking); try reduceScatterBlock(.nonBlocking(.test))
        try reduceScatterV(.blocking); try reduceScatterV(.nonBlocking(.wait))
        try allgatherBlock(.blocking); try allgatherBlock(.nonBlocking(.waitAll))
        try allgatherV()
        try allgatherInPlaceV(.blocking); try allgatherInPlaceV(.nonBlocking(.testAll))
        try alltoallBlock(.blocking); try alltoallBlock(.nonBlocking(.wait))
        try alltoallV(.blocking); try alltoallV(.nonBlocking(.test))
        try broadcast(.blocking); try broadcast(.nonBlocking(.testAll))
        try barrier(.blocking); try barrier(.nonBlocking(.test))
        try sendRecv(); try sendrecvRing(); try isendIrecv(); try isendRowsRing()
        try requestsInFlight()
        try errorPaths()
    }

    // MARK: allreduce

    /// Contributions that make max and min come from the last rank (not rank 0's own buffer).
    func contribution(_ op: ReduceOp, _ rank: Int, _ i: Int) -> Int { (op == .min ? -rank : rank) * 1000 + i }

    func reduced(_ op: ReduceOp, _ i: Int) -> Int {
        let xs = (0..<n).map { contribution(op, $0, i) }
        switch op {
        case .sum: return xs.reduce(0, +)
        case .max: return xs.max()!
        case .min: return xs.min()!
        }
    }

    func allreduces() throws {
        let ops: [ReduceOp] = [.sum, .max, .min]
        var k = 0
        func each<T: CheckValue>(_ t: T.Type) throws {
            for op in ops { try allreduce(t, op) }
            try allreduceSingle(t)
            for op in ops { try iallreduce(t, op, Completion.allCases[k % 4]); k += 1 }
        }
        try each(Float.self); try each(Double.self); try each(Int32.self); try each(Int64.self)
    }

    func allreduce<T: CheckValue>(_: T.Type, _ op: ReduceOp) throws {
        try check("allreduce \(T.typeName) \(op)") { e in
            let count = 5
            let mine = (0..<count).map { T(contribution(op, r, $0)) }, expected = (0..<count).map { T(reduced(op, $0)) }
            let inPlace = Buf(mine)
            try c.allreduce(inPlace.p, count: count, op: op, label: "mpi-check")
            e.equal(inPlace.values, expected, "in place")
            let send = Buf(mine), recv = Buf<T>(count) { _ in sentinel() }
            try c.allreduce(send: send.p, recv: recv.p, count: count, op: op, label: "mpi-check")
            e.equal(recv.values, expected, "send/recv result")
            e.equal(send.values, mine, "send/recv send buffer (must be unchanged)")
        }
    }

    func allreduceSingle<T: CheckValue>(_: T.Type) throws {
        try check("allreduce single value \(T.typeName) sum/max/min") { e in
            for op in [ReduceOp.sum, .max, .min] {
                let got = try c.allreduce(T(contribution(op, r, 7)), op: op, label: "mpi-check")
                e.equal([got], [T(reduced(op, 7))], "\(op)")
            }
        }
    }

    func iallreduce<T: CheckValue>(_: T.Type, _ op: ReduceOp, _ how: Completion) throws {
        try check("iallreduce \(T.typeName) \(op), \(how)") { e in
            let count = 5
            let buf = Buf((0..<count).map { T(contribution(op, r, $0)) })
            try complete([c.iallreduce(buf.p, count: count, op: op)], how, &e)
            e.equal(buf.values, (0..<count).map { T(reduced(op, $0)) }, "result")
        }
    }

    // MARK: reduce-scatter

    /// Block j of rank r's send buffer holds value(r, j·10 + i); rank r receives the sum of block r.
    func reduceScatterBlock(_ mode: Mode) throws {
        try check(mode.label("reduceScatter", "block")) { e in
            let k = 3
            let send = Buf<Float>(n * k) { x in Float(value(r, (x / k) * 10 + x % k)) }
            let recv = Buf<Float>(k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.reduceScatter(send: send.p, recv: recv.p, count: k) },
                        { try c.ireduceScatter(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<k).map { i in Float(sumOverRanks { value($0, r * 10 + i) }) } + [sentinel()]
            e.equal(recv.values, expected, "block \(r) of the sum (+ one guard element)")
        }
    }

    /// Unequal counts with zeros (rank 1 of every group of two or more receives nothing).
    func reduceScatterV(_ mode: Mode) throws {
        try check(mode.label("reduceScatter", "v, unequal counts with a zero")) { e in
            let layout = Layout.packed(unequalCounts(shift: 2))
            let send = Buf<Double>(layout.fill { j, i in value(r, j * 10 + i) })
            let mine = layout.counts[r]
            let recv = Buf<Double>(mine + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.reduceScatter(send: send.p, recv: recv.p, counts: layout.counts) },
                        { try c.ireduceScatter(send: send.p, recv: recv.p, counts: layout.counts) })
            let expected = (0..<mine).map { i in Double(sumOverRanks { value($0, r * 10 + i) }) } + [sentinel()]
            e.equal(recv.values, expected, "\(mine) element(s) of the sum (+ one guard element)")
        }
    }

    // MARK: allgather

    func allgatherBlock(_ mode: Mode) throws {
        try check(mode.label("allgather", "block")) { e in
            let k = 4
            let send = Buf<Int32>(k) { Int32(value(r, $0)) }, recv = Buf<Int32>(n * k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.allgather(send: send.p, recv: recv.p, count: k) },
                        { try c.iallgather(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<(n * k)).map { Int32(value($0 / k, $0 % k)) } + [sentinel()]
            e.equal(recv.values, expected, "block s from rank s (+ one guard element)")
        }
    }

    /// Blocking only (the layer has no non-blocking allgather-v with a separate send buffer).
    func allgatherV() throws {
        try check("allgather v, displacements with gaps") { e in
            let layout = Layout.gapped(unequalCounts(shift: 2))
            let send = Buf<Int64>(layout.counts[r]) { Int64(value(r, $0)) }
            let recv = Buf<Int64>(layout.total) { _ in sentinel() }
            try c.allgather(send: send.p, count: layout.counts[r], recv: recv.p, counts: layout.counts,
                            displacements: layout.displacements)
            e.equal(recv.values, layout.fill { s, i in value(s, i) }, "blocks at their displacements, gaps untouched")
        }
    }

    func allgatherInPlaceV(_ mode: Mode) throws {
        try check(mode.label("allgather", "in place v")) { e in
            let layout = Layout.gapped(unequalCounts(shift: 2))
            let buf = Buf<Float>(layout.fill { s, i in s == r ? value(s, i) : nil })
            try perform(mode, &e,
                        { try c.allgather(inPlace: buf.p, counts: layout.counts, displacements: layout.displacements) },
                        { try c.iallgather(inPlace: buf.p, counts: layout.counts, displacements: layout.displacements) })
            e.equal(buf.values, layout.fill { s, i in value(s, i) }, "blocks at their displacements, gaps untouched")
        }
    }

    // MARK: all-to-all

    /// Block j of rank r's send buffer (value(r, j·10 + i)) lands as block r on rank j.
    func alltoallBlock(_ mode: Mode) throws {
        try check(mode.label("alltoall", "block")) { e in
            let k = 2
            let send = Buf<Float>(n * k) { x in Float(value(r, (x / k) * 10 + x % k)) }
            let recv = Buf<Float>(n * k + 1) { _ in sentinel() }
            try perform(mode, &e, { try c.alltoall(send: send.p, recv: recv.p, count: k) },
                        { try c.ialltoall(send: send.p, recv: recv.p, count: k) })
            let expected = (0..<(n * k)).map { x in Float(value(x / k, r * 10 + x % k)) } + [sentinel()]
            e.equal(recv.values, expected, "block s from rank s (+ one guard element)")
        }
    }

    /// Rank a sends (a + b + 1) % 3 elements to rank b: unequal counts with zeros; received blocks gapped.
    func alltoallV(_ mode: Mode) throws {
        try check(mode.label("alltoall", "v, unequal counts with a zero")) { e in
            let count = { (from: Int, to: Int) in (from + to + 1) % 3 }
            let out = Layout.packed((0..<n).map { count(r, $0) })
            let into = Layout.gapped((0..<n).map { count($0, r) })
            let send = Buf<Int32>(out.fill { j, i in value(r, j * 10 + i) })
            let recv = Buf<Int32>(into.total) { _ in sentinel() }
            try perform(mode, &e,
                        { try c.alltoall(send: send.p, sendCounts: out.counts, sendDisplacements: out.displacements,
                                         recv: recv.p, recvCounts: into.counts, recvDisplacements: into.displacements) },
                        { try c.ialltoall(send: send.p, sendCounts: out.counts, sendDisplacements: out.displacements,
                                          recv: recv.p, recvCounts: into.counts, recvDisplacements: into.displacements) })
            e.equal(recv.values, into.fill { s, i in value(s, r * 10 + i) }, "blocks from each rank, gaps untouched")
        }
    }

    // MARK: broadcast, barrier

    func broadcast(_ mode: Mode) throws {
        try check(mode.label("broadcast", "from the last rank")) { e in
            let root = n - 1, k = 6
            let buf = Buf<Double>(k) { r == root ? Double(value(root, $0)) : sentinel() }
            try perform(mode, &e, { try c.broadcast(buf.p, count: k, root: root) },
                        { try c.ibroadcast(buf.p, count: k, root: root) })
            e.equal(buf.values, (0..<k).map { Double(value(root, $0)) }, "root \(root)'s values")
        }
    }

    /// A barrier has no data; it must complete without error on every rank.
    func barrier(_ mode: Mode) throws {
        try check(mode.label("barrier", "")) { e in
            try perform(mode, &e, { try c.barrier() }, { try c.ibarrier() })
        }
    }

    // MARK: point to point

    /// Around the ring: rank r sends 2 + r elements to r + 1, which posts room for more and must report
    /// the count it got. Rank 0 sends first, the others receive first (no deadlock). Alone, a rank sends to
    /// itself with isend.
    func sendRecv() throws {
        try check("send/recv around the ring, received count") { e in
            let capacity = n + 3
            let send = Buf<Float>(2 + r) { Float(value(r, $0)) }, recv = Buf<Float>(capacity) { _ in sentinel() }
            var got = -1
            if n == 1 {
                let request = try c.isend(send.p, count: send.count, to: 0, tag: MessageTag.selfCheck(11))
                got = try c.recv(recv.p, count: capacity, from: 0, tag: MessageTag.selfCheck(11))
                try complete([request], .wait, &e)
            } else if r == 0 {
                try c.send(send.p, count: send.count, to: next, tag: MessageTag.selfCheck(11))
                got = try c.recv(recv.p, count: capacity, from: prev, tag: MessageTag.selfCheck(11))
            } else {
                got = try c.recv(recv.p, count: capacity, from: prev, tag: MessageTag.selfCheck(11))
                try c.send(send.p, count: send.count, to: next, tag: MessageTag.selfCheck(11))
            }
            e.equal([Int32(got)], [Int32(2 + prev)], "received count from rank \(prev)")
            let expected = (0..<(2 + prev)).map { Float(value(prev, $0)) }
            e.equal(recv.values, expected + Array(repeating: sentinel(), count: capacity - expected.count), "values")
        }
    }

    func sendrecvRing() throws {
        try check("sendrecv around the ring") { e in
            let k = 4
            let send = Buf<Int64>(k) { Int64(value(r, $0)) }, recv = Buf<Int64>(k) { _ in sentinel() }
            try c.sendrecv(send: send.p, sendCount: k, to: next, sendTag: MessageTag.selfCheck(12), recv: recv.p, recvCount: k, from: prev,
                           recvTag: MessageTag.selfCheck(12))
            e.equal(recv.values, (0..<k).map { Int64(value(prev, $0)) }, "values from rank \(prev)")
        }
    }

    /// A block of columns sent without packing: each rank sends columns 1..<3 of a 4-row × 5-column matrix
    /// to the next rank, which receives them as 8 contiguous values.
    func isendRowsRing() throws {
        try check("isendRows (column block, vector type) around the ring") { e in
            let rows = 4, cols = 5, width = 2
            let matrix = Buf<Float>(rows * cols) { Float(value(r, $0)) }, recv = Buf<Float>(rows * width + 1) { _ in sentinel() }
            let receive = try c.irecv(recv.p, count: rows * width, from: prev, tag: MessageTag.selfCheck(13))
            let send = try c.isendRows(matrix.p + 1, rows: rows, width: width, stride: cols, to: next, tag: MessageTag.selfCheck(13))
            try complete([receive, send], .waitAll, &e)
            var expected: [Float] = []
            for row in 0..<rows { for col in 1...width { expected.append(Float(value(prev, row * cols + col))) } }
            e.equal(recv.values, expected + [sentinel()], "columns 1-2 of rank \(prev)'s matrix")
        }
    }

    /// Both receives are posted everywhere (then a barrier) before any send starts.
    func isendIrecv() throws {
        try check("isend/irecv both ways, receives posted first, waitAll") { e in
            let k = 3
            let fromPrev = Buf<Double>(k) { _ in sentinel() }, fromNext = Buf<Double>(k) { _ in sentinel() }
            let toNext = Buf<Double>(k) { Double(value(r, $0)) }, toPrev = Buf<Double>(k) { Double(value(r, 100 + $0)) }
            let receives = [try c.irecv(fromPrev.p, count: k, from: prev, tag: MessageTag.selfCheck(21)),
                            try c.irecv(fromNext.p, count: k, from: next, tag: MessageTag.selfCheck(22))]
            try c.barrier()
            let sends = [try c.isend(toNext.p, count: k, to: next, tag: MessageTag.selfCheck(21)),
                         try c.isend(toPrev.p, count: k, to: prev, tag: MessageTag.selfCheck(22))]
            try complete(receives + sends, .waitAll, &e)
            e.equal(fromPrev.values, (0..<k).map { Double(value(prev, $0)) }, "from rank \(prev)")
            e.equal(fromNext.values, (0..<k).map { Double(value(next, 100 + $0)) }, "from rank \(next)")
        }
    }

    // MARK: requests

    /// Four different operations in flight at once, polled with testAll; afterwards test and waitAll on
    /// the completed requests return at once.
    func requestsInFlight() throws {
        try check("four requests in flight, testAll then test/waitAll again") { e in
            let sum = Buf<Float>(4) { Float(value(r, $0)) }
            let bcast = Buf<Int64>(3) { r == 0 ? Int64(value(0, 50 + $0)) : sentinel() }
            let send = Buf<Int32>(n) { Int32(value(r, $0)) }, recv = Buf<Int32>(n) { _ in sentinel() }
            let requests = [try c.iallreduce(sum.p, count: 4), try c.ibroadcast(bcast.p, count: 3, root: 0),
                            try c.ibarrier(), try c.ialltoall(send: send.p, recv: recv.p, count: 1)]
            try complete(requests, .testAll, &e)
            e.that(try requests.allSatisfy { try $0.test() }, "test() on a completed request returned false")
            try Request.waitAll(requests)
            e.equal(sum.values, (0..<4).map { i in Float(sumOverRanks { value($0, i) }) }, "iallreduce")
            e.equal(bcast.values, (0..<3).map { Int64(value(0, 50 + $0)) }, "ibroadcast")
            e.equal(recv.values, (0..<n).map { Int32(value($0, r)) }, "ialltoall")
        }
    }

    // MARK: errors

    /// Invalid arguments come back as MPIErrors with MPI_Error_string's text, and the communicator still
    /// works afterwards.
    func errorPaths() throws {
        try check("broadcast root = size is MPI_ERR_ROOT") { e in
            let buf = Buf<Int32>(1) { _ in 5 }
            e.throwsMPIError(errorClass: MPI_ERR_ROOT, text: "MPI_ERR_ROOT", operation: "MPI_Bcast", rank: c.worldRank) {
                try c.broadcast(buf.p, count: 1, root: n)
            }
            e.equal(buf.values, [5], "buffer after the failed broadcast")
            e.equal([try c.allreduce(Int32(1), op: .sum)], [Int32(n)], "allreduce after the error")
        }
        try check("ibroadcast root = size is MPI_ERR_ROOT") { e in
            let buf = Buf<Int32>(1) { _ in 5 }
            e.throwsMPIError(errorClass: MPI_ERR_ROOT, text: "MPI_ERR_ROOT", operation: "MPI_Ibcast", rank: c.worldRank) {
                _ = try c.ibroadcast(buf.p, count: 1, root: n)
            }
            e.equal([try c.allreduce(Int32(1), op: .sum)], [Int32(n)], "allreduce after the error")
        }
        try check("negative count is an MPIError") { e in
            let buf = Buf<Float>(1) { _ in 0 }
            e.throwsMPIError(errorClass: nil, text: "count -1 outside", operation: "MPI_Allreduce", rank: c.worldRank) {
                try c.allreduce(buf.p, count: -1)
            }
        }
    }

    // MARK: helpers

    func value(_ rank: Int, _ i: Int) -> Int { rank * 1000 + i }

    func sumOverRanks(_ f: (Int) -> Int) -> Int { (0..<n).map(f).reduce(0, +) }

    /// Per-rank counts 2, 0, 1, 2, 0, ... shifted: unequal, with zeros from two ranks up.
    func unequalCounts(shift: Int) -> [Int] { (0..<n).map { ($0 + shift) % 3 } }

    /// Runs the blocking call, or starts the non-blocking one and completes it as `mode` says.
    func perform(_ mode: Mode, _ e: inout Expectations, _ blocking: () throws -> Void,
                 _ nonBlocking: () throws -> Request) throws {
        switch mode {
        case .blocking: try blocking()
        case .nonBlocking(let how): try complete([try nonBlocking()], how, &e)
        }
    }
}

/// A value no check ever produces, for guard elements and unwritten slots.
func sentinel<T: CheckValue>() -> T { T(-1) }
