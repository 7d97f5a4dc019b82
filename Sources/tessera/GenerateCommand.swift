import ArgumentParser
import TesseraTraining

/// `tessera generate --checkpoint PATH [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]
///  [--stop-at-eot]`.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Sample from a checkpoint.",
        discussion: "Options not given come from the checkpoint config's [sample] section (and training.seed). With "
            + "data.tokenizer in that config, the prompt is encoded and the output decoded with that tokenizer.json; "
            + "otherwise the prompt is fed as bytes.")

    @Option(help: ArgumentHelp("One checkpoint (step-NNNNNN/) or a checkpoint root (its newest valid checkpoint).",
                               valueName: "path"))
    var checkpoint: String?

    // Values may start with '-' (a prompt "- item", a negative seed): taken as values, not flags.
    @Option(parsing: .unconditional, help: ArgumentHelp("The text to continue (encoded by data.tokenizer, else fed as bytes).",
                                                              valueName: "text"))
    var prompt: String?

    @Option(help: ArgumentHelp("How many tokens to sample.", valueName: "n"))
    var tokens: Int?

    @Option(help: ArgumentHelp("Sampling temperature (> 0).", valueName: "t"))
    var temperature: Double?

    @Option(name: .customLong("top-k"), help: ArgumentHelp("Sample among the K most likely tokens (0: all).", valueName: "k"))
    var topK: Int?

    @Option(parsing: .unconditional, help: ArgumentHelp("The sampler's random seed.", valueName: "s"))
    var seed: Int?

    @Flag(name: .customLong("stop-at-eot"), help: "Stop at the tokenizer's <|endoftext|> (needs data.tokenizer).")
    var stopAtEOT = false

    @Argument(parsing: .allUnrecognized, help: .hidden)
    var unexpected: [String] = []

    func validate() throws {
        try rejectUnexpected(unexpected)
        guard checkpoint != nil else { throw ValidationError("generate needs --checkpoint PATH") }
        try requireAtLeast("generate", [("--tokens", tokens, 1), ("--top-k", topK, 0)])
        if let t = temperature, !(t > 0 && t.isFinite) {
            throw ValidationError("generate: --temperature expects a number > 0, got '\(t)'")
        }
    }

    func run() throws {
        _ = prepareMachine()
        print(try CheckpointCommands.generate(checkpoint: checkpoint!, prompt: prompt, tokens: tokens, temperature: temperature,
                                              topK: topK, seed: seed, stopAtEOT: stopAtEOT))
    }
}
