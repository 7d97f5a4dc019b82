// SIGTERM and SIGUSR1 ask a training job to stop cleanly: finish the step in progress, save a checkpoint,
// exit 0. Slurm sends SIGTERM to every task before it kills a job (and SIGUSR1 when asked with
// `--signal=USR1@SECONDS`); mpirun forwards SIGUSR1 to its ranks. The handler only records the signal;
// the training loop looks at the end of each step, and the ranks agree (a signal may reach only some of
// them) before anyone stops.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum StopSignal {
    /// The last stop signal received (0: none). Written by the handler, read by the training loop.
    nonisolated(unsafe) private static let flag: UnsafeMutablePointer<Int32> = {
        let p = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        p.initialize(to: 0)
        return p
    }()

    /// Installs the handlers (idempotent). System calls interrupted by the signal restart.
    public static func install() {
        _ = flag  // initialised here, never inside the handler
        for s in [SIGTERM, SIGUSR1] {
            var a = sigaction()
            a.__sigaction_handler.sa_handler = { StopSignal.flag.pointee = $0 }
            sigemptyset(&a.sa_mask)
            a.sa_flags = Int32(SA_RESTART)
            sigaction(s, &a, nil)
        }
    }

    /// The signal received so far, 0 if none.
    public static var received: Int32 { flag.pointee }

    public static func name(_ s: Int32) -> String {
        switch s {
        case SIGTERM: "SIGTERM"
        case SIGUSR1: "SIGUSR1"
        default: "signal \(s)"
        }
    }
}
