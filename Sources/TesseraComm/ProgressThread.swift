// This MPI advances a non-blocking transfer only inside MPI calls. A large Isend (several shared-memory
// fragments) that a rank posts before a long compute would sit still until that rank's next MPI call, so
// its receiver waits for the sender's compute to end: the overlap the non-blocking call promised is lost.
// The progress thread makes MPI calls for it: while at least one user is active it calls MPI_Iprobe on a
// private duplicate communicator (no message ever matches; the call only drives Open MPI's progress engine)
// every `interval`, and sleeps otherwise. It touches no request, so it never races the main thread's
// waits; MPI_THREAD_MULTIPLE (granted here) makes the concurrent calls legal.

import CMPI
import Foundation

public final class ProgressThread: @unchecked Sendable {
    private let comm: MPI_Comm
    private let lock = NSLock()
    private var users = 0, shutdown = false
    private let exited = DispatchSemaphore(value: 0)
    public let intervalMicroseconds: UInt32
    /// MPI_Iprobe calls made (for tests and reports).
    public private(set) var polls = 0

    /// Collective over `world` (it duplicates the communicator).
    public init(world: Communicator, intervalMicroseconds: UInt32 = 100) throws {
        var dup: MPI_Comm? = nil
        try check(MPI_Comm_dup(world.handle, &dup), "MPI_Comm_dup (progress thread)", rank: world.worldRank)
        comm = dup!
        self.intervalMicroseconds = intervalMicroseconds
        let t = Thread { [unowned self] in self.loop() }
        t.name = "tessera-mpi-progress"
        t.stackSize = 1 << 18
        t.start()
    }

    /// Start driving progress (nested calls are counted).
    public func begin() { lock.lock(); users += 1; lock.unlock() }
    public func end() { lock.lock(); users = max(0, users - 1); lock.unlock() }

    private func loop() {
        var flag: Int32 = 0
        while true {
            lock.lock()
            let stop = shutdown, on = users > 0
            if on { polls += 1 }
            lock.unlock()
            if stop { exited.signal(); return }
            if on { _ = MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, tmpi_status_ignore()) }
            usleep(on ? intervalMicroseconds : 2000)
        }
    }

    /// Stops the thread and waits until it has left MPI (call before MPI_Finalize).
    public func stop() {
        lock.lock(); let already = shutdown; shutdown = true; lock.unlock()
        if !already { _ = exited.wait(timeout: .now() + 2) }
    }
}
