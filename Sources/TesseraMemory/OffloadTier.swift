// The offload tier: one file per rank in `memory.offload_dir` (any directory: local disk, /dev/shm, …)
// that a background thread writes saved activations into and reads them back from, in the order asked.
//
// The file is unlinked as soon as it is opened: it has no name, so nothing is left in the directory after
// the run, whatever way the process ends (SIGKILL included); the kernel frees its blocks when the process
// closes it. A region whose tensors have been read back for the last time is released at once
// (fallocate PUNCH_HOLE), so the tier holds only what a later backward still needs.
//
// Jobs run first in, first out on one thread, so "job k is done" is "the thread has finished job k", and a
// read queued after a write of the same region sees what was written.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Linux fallocate(2) (Glibc's module does not export it: it is a GNU extension).
@_silgen_name("fallocate") private func punchHole(_ fd: Int32, _ mode: Int32, _ offset: off_t, _ length: off_t) -> Int32

public struct OffloadError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

public final class OffloadTier: @unchecked Sendable {
    /// I/O totals since the last `takeStats`.
    public struct Stats: Sendable, Equatable {
        public var bytesWritten = 0, bytesRead = 0
        /// Time the I/O thread spent writing and reading.
        public var ioNs: UInt64 = 0
        /// Time the compute thread spent blocked waiting for the I/O thread (the part not hidden).
        public var waitNs: UInt64 = 0
        public init() {}
        /// Share of the I/O time that overlapped compute: 1 − wait / io.
        public var hiddenFraction: Double { ioNs == 0 ? 1 : max(0, 1 - Double(waitNs) / Double(ioNs)) }
    }

    public let directory: String
    /// Bytes the tier holds now (written and not yet released).
    public var heldBytes: Int { worker.cond.lock(); defer { worker.cond.unlock() }; return worker.held }
    /// Told of each time the compute thread blocked on the tier (start, end in monotonic ns; for traces).
    public var onBlocked: ((UInt64, UInt64) -> Void)?
    /// Where I/O failures go (the trainer aborts the job naming the rank and step).
    public var onError: (String) -> Never = { fatalError($0) }

    private let worker: Worker
    private var fileEnd = 0
    private var nextID = 0

    /// Opens the rank's offload file in `directory` (made if missing) and checks that it can be written and
    /// read back. `setting` names the config key in errors.
    public init(directory: String, rank: Int, setting: String = "memory.offload_dir") throws {
        self.directory = directory
        let fail = { (what: String) in
            OffloadError("\(setting) = '\(directory)': \(what) (rank \(rank)); expected a writable directory")
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            // The system's reason (Foundation's text names neither): make the directory it stopped at.
            let e = error as NSError, at = e.userInfo[NSFilePathErrorKey] as? String ?? directory
            let why = (e.userInfo[NSUnderlyingErrorKey] as? NSError)?.localizedDescription
                ?? (mkdir(at, 0o777) != 0 ? String(cString: strerror(errno)) : "error \(e.code)")
            throw fail("cannot create the directory '\(at)': \(why)")
        }
        let path = (directory.hasSuffix("/") ? directory : directory + "/") + "tessera-offload-rank\(rank)-\(getpid()).bin"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw fail("cannot create a file there: \(String(cString: strerror(errno)))") }
        unlink(path)
        // Write a page and read it back: a read-only or full file system fails here, not mid-step.
        var probe = [UInt8](repeating: 0x5A, count: 4096), back = [UInt8](repeating: 0, count: 4096)
        let w = probe.withUnsafeMutableBytes { pwrite(fd, $0.baseAddress, 4096, 0) }
        let r = back.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, 0) }
        guard w == 4096, r == 4096, probe == back else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw fail("cannot write and read back a test page: \(e)")
        }
        worker = Worker(fd: fd)
        worker.canPunch = punchHole(fd, 0x03 /* PUNCH_HOLE | KEEP_SIZE */, 0, 4096) == 0
        let t = Thread { [worker] in worker.run() }
        t.name = "tessera-offload"
        t.stackSize = 1 << 18
        t.start()
    }

    deinit { worker.stop() }

    /// A region of `bytes` in the file for one block's tensors (page aligned; the file grows sparse).
    public func reserve(bytes: Int) -> Int {
        let offset = fileEnd
        fileEnd += (bytes + 4095) / 4096 * 4096
        return offset
    }

    /// Queues a write of `bytes` from `p` (which must stay unchanged until the job is done) to `offset`.
    public func write(_ p: UnsafeRawPointer, bytes: Int, offset: Int) -> Int {
        enqueue(.write, UnsafeMutableRawPointer(mutating: p), bytes, offset)
    }

    /// Queues a read of `bytes` at `offset` into `p`.
    public func read(into p: UnsafeMutableRawPointer, bytes: Int, offset: Int) -> Int {
        enqueue(.read, p, bytes, offset)
    }

    /// Queues the release of a region whose contents are no longer needed.
    public func release(offset: Int, bytes: Int) { _ = enqueue(.release, nil, bytes, offset) }

    /// A queued job that has not started is skipped (a write whose data was used from memory).
    public func cancel(_ id: Int) {
        worker.cond.lock(); defer { worker.cond.unlock() }
        if let i = worker.queue.firstIndex(where: { $0.id == id }) { worker.queue[i].cancelled = true }
    }

    public func isDone(_ id: Int) -> Bool {
        worker.cond.lock(); defer { worker.cond.unlock() }
        return worker.finished >= id
    }

    /// Blocks until job `id` is done; the time blocked counts as not hidden.
    /// A failed job (an earlier write included) ends the run here, even when job `id` itself is done: a read
    /// of a region whose write failed would otherwise return zeros.
    public func wait(_ id: Int) {
        worker.cond.lock()
        var blocked: (UInt64, UInt64)?
        if worker.finished < id && worker.failure == nil {
            let t0 = DispatchTime.now().uptimeNanoseconds
            while worker.finished < id && worker.failure == nil { worker.cond.wait() }
            let t1 = DispatchTime.now().uptimeNanoseconds
            worker.stats.waitNs += t1 - t0
            blocked = (t0, t1)
        }
        let failure = worker.failure
        worker.cond.unlock()
        if let blocked { onBlocked?(blocked.0, blocked.1) }
        if let failure { onError("offload tier '\(directory)': \(failure)") }
    }

    /// Waits for every queued job.
    public func drain() { wait(nextID) }

    /// The totals since the last call, and starts new ones.
    public func takeStats() -> Stats {
        worker.cond.lock(); defer { worker.cond.unlock() }
        let s = worker.stats
        worker.stats = Stats()
        return s
    }

    /// Write and read bandwidth (bytes/s) of the tier, measured with `bytes` through this tier's file.
    public func measureBandwidth(bytes: Int = 32 << 20) -> (write: Double, read: Double) {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { buf.deallocate() }
        memset(buf, 0x3C, bytes)
        let offset = reserve(bytes: bytes)
        drain()
        var t0 = DispatchTime.now().uptimeNanoseconds
        wait(write(buf, bytes: bytes, offset: offset))
        let w = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        t0 = DispatchTime.now().uptimeNanoseconds
        wait(read(into: buf, bytes: bytes, offset: offset))
        let r = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        release(offset: offset, bytes: bytes)
        drain()
        _ = takeStats()
        return (Double(bytes) / max(w, 1e-9), Double(bytes) / max(r, 1e-9))
    }

    private func enqueue(_ op: Job.Op, _ p: UnsafeMutableRawPointer?, _ bytes: Int, _ offset: Int) -> Int {
        nextID += 1
        worker.cond.lock()
        worker.queue.append(Job(id: nextID, op: op, ptr: p, bytes: bytes, offset: offset))
        worker.cond.broadcast()
        worker.cond.unlock()
        return nextID
    }

    struct Job {
        enum Op { case write, read, release }
        let id: Int, op: Op, ptr: UnsafeMutableRawPointer?, bytes: Int, offset: Int
        var cancelled = false
    }

    /// The state the I/O thread shares with the tier (the thread holds this, not the tier); all of it is
    /// guarded by `cond`.
    final class Worker: @unchecked Sendable {
        let fd: Int32
        let cond = NSCondition()
        var queue: [Job] = []
        var finished = 0
        var stopping = false, stopped = false
        var failure: String?
        var stats = Stats()
        var held = 0
        var written = Set<Int>()   // regions holding data (for `held`)
        var canPunch = false

        init(fd: Int32) { self.fd = fd }

        func run() {
            cond.lock()
            while true {
                while queue.isEmpty && !stopping { cond.wait() }
                if queue.isEmpty { break }
                let job = queue.removeFirst()
                cond.unlock()
                let t0 = DispatchTime.now().uptimeNanoseconds
                let error = job.cancelled ? nil : perform(job)
                let dt = DispatchTime.now().uptimeNanoseconds - t0
                cond.lock()
                if !job.cancelled {
                    switch job.op {
                    case .write:
                        stats.bytesWritten += job.bytes; stats.ioNs += dt
                        if written.insert(job.offset).inserted { held += job.bytes }
                    case .read: stats.bytesRead += job.bytes; stats.ioNs += dt
                    case .release: if written.remove(job.offset) != nil { held -= job.bytes }
                    }
                }
                if let error, failure == nil { failure = error }
                finished = job.id
                cond.broadcast()
            }
            stopped = true
            cond.broadcast()
            cond.unlock()
        }

        func perform(_ job: Job) -> String? {
            var done = 0
            while done < job.bytes {
                let n: Int
                switch job.op {
                case .write: n = pwrite(fd, job.ptr! + done, job.bytes - done, off_t(job.offset + done))
                case .read: n = pread(fd, job.ptr! + done, job.bytes - done, off_t(job.offset + done))
                case .release:
                    if canPunch { _ = punchHole(fd, 0x03, off_t(job.offset), off_t((job.bytes + 4095) / 4096 * 4096)) }
                    return nil
                }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    let what = job.op == .write ? "writing" : "reading"
                    return "\(what) \(job.bytes) bytes at offset \(job.offset) failed: " + (n < 0 ? String(cString: strerror(errno)) : "end of file")
                }
                done += n
            }
            return nil
        }

        func stop() {
            cond.lock()
            stopping = true
            cond.broadcast()
            while !stopped { cond.wait() }
            cond.unlock()
            close(fd)
        }
    }
}
