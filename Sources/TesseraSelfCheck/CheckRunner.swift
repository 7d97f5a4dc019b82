// How `tessera mpi-check` runs a check and agrees on its outcome over the ranks, the completion styles of
// non-blocking calls, and the typed buffers with guard elements the checks use.

import CMPI
import Foundation
import TesseraComm

// MARK: - non-blocking completion

enum Completion: String, CaseIterable, CustomStringConvertible {
    case wait, test, waitAll, testAll
    var description: String { rawValue }
}

enum Mode {
    case blocking, nonBlocking(Completion)

    /// "allgather block" or "iallgather block, testAll".
    func label(_ call: String, _ detail: String) -> String {
        let d = detail.isEmpty ? "" : " \(detail)"
        switch self {
        case .blocking: return call + d
        case .nonBlocking(let how): return "i\(call)\(d), \(how)"
        }
    }
}

/// Completes requests the way `how` names, then expects every one complete.
func complete(_ requests: [Request], _ how: Completion, _ e: inout Expectations) throws {
    switch how {
    case .wait: for request in requests { try request.wait() }
    case .waitAll: try Request.waitAll(requests)
    case .test: try poll(requests) { try requests.allSatisfy { try $0.test() } }
    case .testAll: try poll(requests) { try Request.testAll(requests) == requests.count }
    }
    e.that(requests.allSatisfy(\.isComplete), "a request is not complete after \(how)")
}

/// Polls until `done`. Each test drives MPI's progress engine; the watchdog ends a poll that never finishes.
func poll(_ requests: [Request], _ done: () throws -> Bool) throws {
    let dog = Watchdog.shared
    let token = requests.first.flatMap { dog?.arm("MPI_Test polling", requests.map(\.label).joined(separator: ", "), $0.comm) }
    defer { if let token { dog?.disarm(token) } }
    while try !done() { sched_yield() }
}

// MARK: - running checks

/// Runs named checks collectively and agrees on each outcome over the world.
final class CheckRunner {
    let world: Communicator
    let output: (String) -> Void
    let fault: (rank: Int, check: String)?
    private(set) var checks = 0, failed = 0

    init(world: Communicator, output: @escaping (String) -> Void, fault: (rank: Int, check: String)?) {
        self.world = world; self.output = output; self.fault = fault
    }

    func check(_ name: String, _ body: (inout Expectations) throws -> Void) throws {
        var e = Expectations(corrupt: fault.map { $0.rank == world.rank && $0.check == name } ?? false)
        do { try body(&e) } catch { e.fail("threw \(error)") }
        for failure in e.failures { output("FAIL \(name): rank \(world.rank): \(failure)") }
        let failing = try world.allreduce(Int32(e.failures.isEmpty ? 0 : 1), op: .sum, label: "mpi-check agreement")
        checks += 1
        if failing > 0 { failed += 1 }
        guard world.rank == 0 else { return }
        output(failing == 0 ? "ok  \(name)" : "FAIL \(name): failed on \(failing) of \(world.size) rank(s)")
    }
}

/// What one rank found wrong in one check.
struct Expectations {
    private(set) var failures: [String] = []
    /// --inject-fault: the first compared result is corrupted before the comparison.
    var corrupt: Bool

    mutating func fail(_ message: String) { failures.append(message) }

    mutating func that(_ condition: Bool, _ message: @autoclosure () -> String) {
        if !condition { fail(message()) }
    }

    /// Element-wise exact comparison; reports the first difference and how many there are.
    mutating func equal<T: CheckValue>(_ got: [T], _ expected: [T], _ what: String) {
        var got = got
        if corrupt && !got.isEmpty { got[0] = T(-999_999); corrupt = false }
        guard got.count == expected.count else {
            return fail("\(what): \(got.count) elements, expected \(expected.count)")
        }
        let differing = got.indices.filter { got[$0] != expected[$0] }
        guard let i = differing.first else { return }
        let more = differing.count > 1 ? " (\(differing.count) of \(got.count) elements differ)" : ""
        fail("\(what): element \(i): expected \(expected[i]), got \(got[i])\(more)")
    }

    /// `body` must throw an MPIError for `operation` on `rank` whose message contains `text`, with MPI error
    /// class `errorClass` (nil: an error the layer raises before calling MPI).
    mutating func throwsMPIError(errorClass: Int32?, text: String, operation: String, rank: Int,
                                 _ body: () throws -> Void) {
        do {
            try body()
            fail("no error thrown")
        } catch let error as MPIError {
            that(error.message.contains(text), "message '\(error.message)' does not mention \(text)")
            that(error.operation.contains(operation), "operation '\(error.operation)', expected \(operation)")
            that(error.rank == rank, "error names rank \(error.rank), expected \(rank)")
            if let errorClass {
                var cls: Int32 = -1
                MPI_Error_class(error.code, &cls)
                that(cls == errorClass, "MPI error class \(cls), expected \(errorClass)")
                that(error.message == MPIError.text(error.code), "message is not MPI_Error_string's")
            }
        } catch {
            fail("threw \(type(of: error)) \(error), not an MPIError")
        }
    }
}

// MARK: - data

/// Element types the checks use (every MPIScalar the layer reduces), built from exact small integers.
protocol CheckValue: MPIScalar, Comparable, CustomStringConvertible {
    init(_ value: Int)
    static var typeName: String { get }
}
extension Float: CheckValue { static var typeName: String { "float" } }
extension Double: CheckValue { static var typeName: String { "double" } }
extension Int32: CheckValue { static var typeName: String { "int32" } }
extension Int64: CheckValue { static var typeName: String { "int64" } }

/// Stable storage for one buffer: non-blocking calls need memory that outlives the call.
final class Buf<T: MPIScalar> {
    let p: UnsafeMutablePointer<T>
    let count: Int

    init(_ values: [T]) {
        count = values.count
        p = .allocate(capacity: max(count, 1))
        p.initialize(from: values, count: count)
    }
    convenience init(_ count: Int, _ value: (Int) -> T) { self.init((0..<count).map(value)) }
    deinit { p.deinitialize(count: count); p.deallocate() }

    var values: [T] { Array(UnsafeBufferPointer(start: p, count: count)) }
}

/// Per-rank blocks in one buffer: counts and displacements (elements) for the v-variants.
struct Layout {
    let counts: [Int], displacements: [Int], total: Int

    /// Blocks back to back.
    static func packed(_ counts: [Int]) -> Layout {
        Layout(counts: counts, displacements: offsets(counts, gap: 0), total: counts.reduce(0, +))
    }

    /// One unused element before each block and one after the last, so a wrong displacement shows.
    static func gapped(_ counts: [Int]) -> Layout {
        Layout(counts: counts, displacements: offsets(counts, gap: 1), total: counts.reduce(0, +) + counts.count + 1)
    }

    static func offsets(_ counts: [Int], gap: Int) -> [Int] {
        var at = 0
        return counts.map { count in at += gap; defer { at += count }; return at }
    }

    /// The buffer with element i of block j = value(j, i) (a sentinel where value is nil and in the gaps).
    func fill<T: CheckValue>(_ value: (Int, Int) -> Int?) -> [T] {
        var out = [T](repeating: sentinel(), count: total)
        for (j, count) in counts.enumerated() {
            for i in 0..<count { if let v = value(j, i) { out[displacements[j] + i] = T(v) } }
        }
        return out
    }
}
