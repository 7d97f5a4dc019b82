import ArgumentParser
import TesseraBench
import TesseraComm

/// `tessera bench-comm` (under mpirun -np 2 or more).
struct BenchCommCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-comm", abstract: "Allreduce bus bandwidth: the Swift layer vs plain C (under mpirun).")

    @Option(name: .customLong("max-mib"), help: ArgumentHelp("Largest message, MiB (from 1 KiB up by factors of 2).", valueName: "n"))
    var maxMiB = CommBench.Options().maxMiB
    @Option(help: ArgumentHelp("Iterations per timed loop (auto: about 10 ms per loop).", valueName: "auto|n"))
    var iters = "auto"
    @Option(help: ArgumentHelp("Timed loops of each kind per size.", valueName: "n"))
    var rounds = CommBench.Options().rounds
    @Flag(help: "Also print a JSON report, one object per size.")
    var json = false
    @Flag(help: "Also measure the layer with no watchdog and the per-call cost of its pieces.")
    var breakdown = false

    /// The benchmark's options from these flags, checked.
    func options() throws -> CommBench.Options {
        var o = CommBench.Options()
        o.maxMiB = maxMiB; o.rounds = rounds; o.json = json; o.breakdown = breakdown
        if iters != "auto" {
            guard let n = Int(iters) else { throw ValidationError("bench-comm: --iters expects auto or an integer >= 1, got '\(iters)'") }
            o.iters = n
        }
        do { try o.validate() } catch { throw ValidationError("\(error)") }
        return o
    }

    func validate() throws { _ = try options() }

    func run() throws {
        _ = prepareMachine()
        let o = try options()
        let runtime = MPIRuntime()
        let status = CommBench.command(o, runtime: runtime)
        runtime.finalize()
        if status != 0 { throw ExitCode(status) }
    }
}
