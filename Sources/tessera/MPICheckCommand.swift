import ArgumentParser
import TesseraSelfCheck

/// `tessera mpi-check` (under mpirun): every MPI call of the communication layer and the mesh, checked.
struct MPICheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mpi-check", abstract: "Under mpirun: check every MPI call and the mesh.",
        discussion: "Without mesh flags the mesh is pp 1 × dp (world size); a flag not given is 1. Exit status: 0 all "
            + "checks passed, 1 a check failed, 2 bad arguments or a mesh that does not fit the job.")

    @Option(help: ArgumentHelp("Pipeline stages.", valueName: "n")) var pp: Int?
    @Option(help: ArgumentHelp("Data-parallel replicas.", valueName: "n")) var dp: Int?
    @Option(help: ArgumentHelp("Ring attention degree.", valueName: "n")) var ring: Int?
    @Option(help: ArgumentHelp("Ulysses degree.", valueName: "n")) var ulysses: Int?
    @Option(help: ArgumentHelp("The mesh dimensions innermost first (default ulysses,ring,dp,pp).", valueName: "d,d,d,d"))
    var order: String?
    @Option(name: .customLong("inject-fault"), help: ArgumentHelp(
        "Debugging: this rank corrupts its result in one check, to show a failure stops every rank.", valueName: "rank"))
    var injectFault: Int?

    func run() throws {
        _ = prepareMachine()
        var degrees: [String: Int] = [:]
        for (flag, value) in [("--pp", pp), ("--dp", dp), ("--ring", ring), ("--ulysses", ulysses)] {
            if let value { degrees[flag] = value }
        }
        // MPI starts here, after parsing: `--help` and a bad command line never start it.
        let status = CommSelfCheck.command(degrees: degrees, fault: injectFault, order: order)
        if status != 0 { throw ExitCode(status) }
    }
}
