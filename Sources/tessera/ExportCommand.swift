import ArgumentParser
import TesseraTraining

/// `tessera export --hf DIR --checkpoint PATH`.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write a Hugging Face GPT-2 directory (config.json, model.safetensors) from a checkpoint.")

    @Option(help: ArgumentHelp("The directory to write.", valueName: "dir"))
    var hf: String?

    @Option(help: ArgumentHelp("One checkpoint (step-NNNNNN/) or a checkpoint root (its newest valid checkpoint).",
                               valueName: "path"))
    var checkpoint: String?

    @Argument(parsing: .allUnrecognized, help: .hidden)
    var unexpected: [String] = []

    func validate() throws {
        try rejectUnexpected(unexpected)
        guard hf != nil, checkpoint != nil else { throw ValidationError("export needs --hf DIR and --checkpoint PATH") }
    }

    func run() throws {
        _ = prepareMachine()
        print(try CheckpointCommands.export(hf: hf!, checkpoint: checkpoint!))
    }
}
