// A whole model from a checkpoint, for commands that use a trained model outside training (`tessera
// export`, `tessera generate`). The checkpoint's manifest carries the config that wrote it; the model is
// built from that config's [model] section, on one rank with no pipeline stage, and every parameter is
// read from kind "param" of the checkpoint, whatever layout wrote it (each read covers the whole tensor
// from the shards that overlap it, checksums verified).

import Foundation
import TesseraCheckpoint
import TesseraModel

public final class CheckpointModel {
    /// The checkpoint directory read (step-NNNNNN).
    public let path: String
    public let manifest: CheckpointManifest
    /// The config that wrote the checkpoint (data files not checked).
    public let config: TesseraConfig
    public let model: Transformer

    /// `path` is one checkpoint directory (it holds manifest.json) or a checkpoint root (then the newest
    /// checkpoint that verifies; `log` gets a line for each newer one skipped, with the reason).
    public init(path: String, log: (String) -> Void = { _ in }) throws {
        let reader = try Self.resolve(path, log: log)
        self.path = reader.path
        manifest = reader.manifest
        config = try Self.config(of: reader)
        let gc = config.transformer
        try Self.checkTensors(reader, against: gc, config: config)
        model = Transformer.make(config: gc, seed: 0)
        let params = model.params
        for (i, spec) in params.specs.enumerated() {
            do { try reader.read(tensor: spec.name, kind: "param", range: 0..<spec.count, into: params.pointer(i)) } catch {
                throw CheckpointError("\(reader.path): cannot read parameter '\(spec.name)': \(error)")
            }
        }
    }

    /// The checkpoint `path` names: the directory itself if it holds manifest.json, else the newest valid
    /// checkpoint under it.
    public static func resolve(_ path: String, log: (String) -> Void = { _ in }) throws -> CheckpointReader {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        let expected = "expected a checkpoint directory (step-NNNNNN/ holding manifest.json) or a checkpoint root "
            + "(the checkpoint.dir of a run, holding step-NNNNNN/ directories)"
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CheckpointError("\(path): no such file or directory; \(expected)")
        }
        guard isDirectory.boolValue else { throw CheckpointError("\(path): is a file; \(expected)") }
        if fm.fileExists(atPath: path + "/manifest.json") { return try CheckpointReader(path: path) }
        let found = CheckpointStore.list(root: path)
        guard !found.isEmpty else { throw CheckpointError("\(path): no manifest.json and no step-NNNNNN/ checkpoint in it; \(expected)") }
        var skipped: [String] = []
        let reader = CheckpointReader.newestValid(root: path, skipped: &skipped)
        for s in skipped { log("skipped a checkpoint that does not verify: \(s)") }
        guard let reader else {
            throw CheckpointError("\(path): none of its \(found.count) checkpoint(s) verifies:\n  " + skipped.joined(separator: "\n  "))
        }
        return reader
    }

    /// The config the manifest carries, loaded without its data files.
    static func config(of reader: CheckpointReader) throws -> TesseraConfig {
        let source = reader.path + "/manifest.json (config)"
        do {
            return try ConfigLoader.load(text: reader.manifest.config, source: source, overrides: [], dataFiles: false)
        } catch {
            throw CheckpointError("\(reader.path)/manifest.json: its config does not load:\n\(error)")
        }
    }

    /// The manifest must list exactly the config's model: every parameter with its shape, nothing else.
    static func checkTensors(_ reader: CheckpointReader, against gc: TransformerConfig, config: TesseraConfig) throws {
        let problems = tensorProblems(reader.manifest, specs: ModelParameters.specs(gc), model: "the config's model")
        guard problems.isEmpty else {
            throw CheckpointError("\(reader.path)/manifest.json: its tensors do not match its config's model (\(describe(config.model))):\n  "
                                  + problems.joined(separator: "\n  "))
        }
    }

    /// What differs between a manifest's tensors and a model's parameters (`model` names the model in the lines).
    static func tensorProblems(_ manifest: CheckpointManifest, specs: [ParameterSpec], model: String) -> [String] {
        var problems: [String] = []
        for s in specs {
            guard let t = manifest.tensor(s.name) else {
                problems.append("no tensor '\(s.name)' (shape \(s.shape)) in the manifest")
                continue
            }
            if t.shape != s.shape { problems.append("tensor '\(s.name)' has shape \(t.shape) in the manifest, \(model) gives \(s.shape)") }
            if t.dtype != "F32" { problems.append("tensor '\(s.name)' has dtype \(t.dtype), expected F32") }
        }
        let names = Set(specs.map(\.name))
        for t in manifest.tensors where !names.contains(t.name) {
            problems.append("the manifest lists tensor '\(t.name)', which \(model) does not have")
        }
        return problems
    }

    static func describe(_ m: ModelConfig) -> String {
        let llama = m.family == "llama"
            ? ", n_kv_head = \(m.transformer.nKVHead), intermediate_size = \(m.transformer.intermediate), tie_word_embeddings = \(m.tieWordEmbeddings)" : ""
        return "model.family = \"\(m.family)\", vocab_size = \(m.vocabSize), n_layer = \(m.nLayer), n_head = \(m.nHead), d_model = \(m.dModel), "
            + "block_size = \(m.blockSize)\(llama)"
    }
}
