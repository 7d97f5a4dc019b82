import ArgumentParser
import TesseraBench
import TesseraKernels

/// `tessera bench`: sgemm ceiling, tokens/s and MFU of the standard sizes.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "The fp32 and bf16 product ceilings, training tokens/s and MFU of the standard model sizes (GPT-2 S, M, L, G and their Llama twins).")

    @Option(help: ArgumentHelp("Comma-separated model sizes (S, M, L, G; llama-S, llama-M, llama-L, llama-G).", valueName: "sizes"))
    var sizes = "S,M,L,G"

    @Option(help: ArgumentHelp("Kernel threads (default: the cores available).", valueName: "n"))
    var threads: Int?

    @Option(help: ArgumentHelp("Timed steps per size (the median is reported).", valueName: "n"))
    var steps = 5

    @Option(help: ArgumentHelp("Untimed warm-up steps per size.", valueName: "n"))
    var warmup = 2

    @Flag(help: "Also print a JSON report, one object per size.")
    var json = false

    @Flag(help: "Also print where a step's time goes, op by op.")
    var profile = false

    @Flag(help: "Also time the attention kernel alone at each size's shape (forward, backward, share of the ceiling).")
    var attention = false

    @Option(help: ArgumentHelp("Also time the attention kernel on rows packed with documents of this many tokens against whole causal rows (data.packing = documents).", valueName: "tokens"))
    var documents: Int?

    @Option(help: ArgumentHelp("Number format of the matrix products: fp32 or bf16.", valueName: "fp32|bf16"))
    var precision = "fp32"

    /// The sizes asked for, by their canonical names (case does not matter: "m" and "llama-s" are M and llama-S).
    var names: [String] {
        sizes.split(separator: ",").map { n in BenchSize.all.first { $0.name.lowercased() == n.lowercased() }?.name ?? String(n) }
    }

    func validate() throws {
        try requireAtLeast("bench", [("--threads", threads, 1), ("--steps", steps, 1), ("--warmup", warmup, 0), ("--documents", documents, 1)])
        guard Precision(rawValue: precision) != nil else { throw ValidationError("bench: --precision must be fp32 or bf16, not '\(precision)'") }
        if let e = ProductBackend.configurationError { throw ValidationError("bench: \(e)") }
        if let e = BlockProduct.configurationError { throw ValidationError("bench: \(e)") }
        let known = BenchSize.all.map(\.name)
        for n in names where !known.contains(n) { throw ValidationError("bench: unknown size '\(n)' (sizes: \(known.joined(separator: ", ")))") }
    }

    func run() throws {
        let note = prepareMachine()
        if let note { print("note: \(note)") }
        print(Bench.run(names: names, threads: threads ?? Threads.availableCores(), steps: steps, warmup: warmup, json: json,
                        profile: profile, precision: Precision(rawValue: precision)!, attention: attention))
        if let documents {
            let chosen = names.compactMap { n in BenchSize.all.first { $0.name == n } }
            print(AttentionBench.documentsReport(sizes: chosen, length: documents, threads: threads ?? Threads.availableCores(), json: json)
                    .joined(separator: "\n"))
        }
    }
}
