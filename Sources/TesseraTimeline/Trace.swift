// Chrome trace-event JSON (the format chrome://tracing and https://ui.perfetto.dev open): one file per
// rank, complete events ("ph": "X") with microsecond timestamps on the wall clock, so files of ranks on
// one machine line up. pid = rank; tid 0 = the compute thread's spans and waits ("X" events, properly
// nested). Non-blocking communication in flight overlaps freely, so it is written as async events
// ("b"/"e" pairs with an id), which Perfetto draws on their own tracks under the rank.

import Foundation

public final class TraceRecorder: @unchecked Sendable {
    public enum Track: Int, Sendable { case compute = 0, communication = 1 }

    struct Event { let name: String; let cat: String; let beginNs: UInt64; let durNs: UInt64; let track: Track }

    public let rank: Int
    private var events: [Event] = []
    private let lock = NSLock()
    /// Offset from the monotonic clock to the Unix epoch, in ns (fixed at start).
    private let epochOffsetNs: Int64

    public init(rank: Int, capacity: Int = 1 << 16) {
        self.rank = rank
        events.reserveCapacity(capacity)
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let wall = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        epochOffsetNs = wall - Int64(nowNs())
    }

    public func complete(_ name: String, cat: String, beginNs: UInt64, endNs: UInt64, track: Track) {
        lock.lock()
        events.append(Event(name: name, cat: cat, beginNs: beginNs, durNs: endNs >= beginNs ? endNs - beginNs : 0,
                            track: track))
        lock.unlock()
    }

    public var count: Int { lock.lock(); defer { lock.unlock() }; return events.count }

    /// The trace as JSON text.
    public func json() -> String {
        lock.lock(); defer { lock.unlock() }
        var s = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"
        s += "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":\(rank),\"args\":{\"name\":\"rank \(rank)\"}},\n"
        s += "{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":\(rank),\"args\":{\"sort_index\":\(rank)}},\n"
        s += "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(rank),\"tid\":0,\"args\":{\"name\":\"compute\"}},\n"
        s += "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":\(rank),\"tid\":1,\"args\":{\"name\":\"communication in flight\"}}"
        for (id, e) in events.enumerated() {
            let ts = Double(Int64(e.beginNs) + epochOffsetNs) / 1000, dur = Double(e.durNs) / 1000
            let head = "{\"name\":\(Self.quote(e.name)),\"cat\":\"\(e.cat)\",\"pid\":\(rank),\"tid\":\(e.track.rawValue),"
            switch e.track {
            case .compute:
                s += ",\n" + head + "\"ph\":\"X\",\"ts\":\(String(format: "%.3f", ts)),\"dur\":\(String(format: "%.3f", dur))}"
            case .communication:
                s += ",\n" + head + "\"ph\":\"b\",\"id\":\(id),\"ts\":\(String(format: "%.3f", ts))}"
                s += ",\n" + head + "\"ph\":\"e\",\"id\":\(id),\"ts\":\(String(format: "%.3f", ts + dur))}"
            }
        }
        s += "\n]}\n"
        return s
    }

    /// Writes DIR/trace-rank<R>.json (creating DIR). Returns the path.
    @discardableResult
    public func write(directory: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent("trace-rank\(rank).json")
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try json().write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            // The system's reason (Foundation's text names neither): make the directory it stopped at.
            let e = error as NSError, at = e.userInfo[NSFilePathErrorKey] as? String ?? directory
            let why = (e.userInfo[NSUnderlyingErrorKey] as? NSError)?.localizedDescription
                ?? (mkdir(at, 0o777) != 0 ? String(cString: strerror(errno)) : "error \(e.code)")
            throw TraceError(description: "--trace = '\(directory)': cannot write '\(path)' (rank \(rank)): '\(at)': \(why); "
                             + "expected a writable directory")
        }
        return path
    }

    static func quote(_ s: String) -> String {
        var o = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case "\n": o += "\\n"
            default: if ch.value < 0x20 { o += String(format: "\\u%04x", ch.value) } else { o.unicodeScalars.append(ch) }
            }
        }
        return o + "\""
    }
}

/// A trace that could not be written: the flag, the path and the system's reason.
public struct TraceError: Error, CustomStringConvertible {
    public let description: String
}
