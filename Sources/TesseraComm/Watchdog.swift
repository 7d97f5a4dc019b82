// A collective that never completes (a rank stalled, a peer lost without the launcher noticing) must not
// hang the job. Every blocking call and every wait arms the watchdog with what it is doing; a background
// thread checks the deadlines and, when one passes, prints which operation on which rank at which step
// has not completed within `timeout` and aborts the whole job (MPI_Abort).

import Foundation
import TesseraTimeline

public final class Watchdog: @unchecked Sendable {
    nonisolated(unsafe) public static var shared: Watchdog?

    public let timeoutNs: UInt64
    public let rank: Int
    /// The training step, for messages (set by the training loop).
    nonisolated(unsafe) public var step: Int = -1
    private let lock = NSLock()
    /// Armed waits: fixed slots (no allocation per call); `what` is formatted only on timeout.
    private struct Slot { var op: StaticString = ""; var label = ""; var comm: Communicator?; var since: UInt64 = 0; var used = false }
    private var slots = [Slot](repeating: Slot(), count: 64)
    private var thread: Thread?
    private let onTimeout: @Sendable (String) -> Void

    public init(rank: Int, timeoutSeconds: Double, onTimeout: @escaping @Sendable (String) -> Void) {
        self.rank = rank
        timeoutNs = UInt64(timeoutSeconds * 1e9)
        self.onTimeout = onTimeout
        // The thread holds the watchdog weakly and ends once it is gone (benchmarks make several trainers).
        let period = min(max(timeoutNs / 20, 10_000_000), 250_000_000)
        let t = Thread { [weak self] in
            while true {
                usleep(UInt32(period / 1000))
                guard let dog = self, dog.check() else { return }
            }
        }
        t.name = "tessera-watchdog"
        t.stackSize = 1 << 18
        thread = t
        t.start()
    }

    /// Marks the start of operation `op` (with `label`) on `comm`; returns a token for `disarm`.
    public func arm(_ op: StaticString, _ label: String, _ comm: Communicator?) -> Int {
        let now = nowNs()
        lock.lock(); defer { lock.unlock() }
        guard let i = slots.firstIndex(where: { !$0.used }) else { return -1 }  // 64 waits at once: unwatched
        slots[i] = Slot(op: op, label: label, comm: comm, since: now, used: true)
        return i
    }

    public func disarm(_ token: Int) {
        guard token >= 0 else { return }
        lock.lock(); slots[token].used = false; slots[token].comm = nil; lock.unlock()
    }

    /// One look at the armed waits; false once one has timed out (and `onTimeout` was told).
    private func check() -> Bool {
        do {
            lock.lock()
            // Read the clock under the lock: an entry armed after an earlier reading would have `since` > `now`
            // and the unsigned difference would wrap (a trap in debug, a false timeout in release).
            let now = nowNs()
            let late = slots.first { $0.used && now >= $0.since && now - $0.since > timeoutNs }
            lock.unlock()
            if let late {
                let what = "\(Communicator.describe(late.op, late.label)) on communicator '\(late.comm?.name ?? "?")'"
                let secs = Double(timeoutNs) / 1e9
                let at = step >= 0 ? " at step \(step)" : ""
                onTimeout("rank \(rank): watchdog: \(what)\(at) has not completed within "
                    + "parallelism.timeout_s = \(secs.formatted()) s; aborting the job")
                return false
            }
            return true
        }
    }
}

extension Double {
    func formatted() -> String { self == rounded() ? String(Int(self)) : String(self) }
}
