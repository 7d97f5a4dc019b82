// Llama and Hugging Face: a directory that transformers' LlamaForCausalLM.from_pretrained loads as it is, and
// the reverse (a Hugging Face Llama directory into a Tessera Llama, shapes checked against its config).
//   config.json        a LlamaConfig: sizes, grouped heads, RMSNorm eps, RoPE θ (default rope type), SiLU,
//                      no biases, tie_word_embeddings as the model has it
//   model.safetensors  every parameter as F32 under its HF name and layout ([out, in]); a tied model has no
//                      lm_head.weight; header metadata {"format": "pt"}

import Foundation
import TesseraKernels
import TesseraModel

public enum LlamaHF {
    /// A Llama config as JSON text. bos/eos: 1 and 2 as Llama's tokenizers number them unless told.
    public static func configJSON(_ c: TransformerConfig, bos: Int = 1, eos: Int = 2) -> String {
        let fields: [(String, String)] = [
            ("architectures", "[\"LlamaForCausalLM\"]"),
            ("attention_bias", "false"),
            ("attention_dropout", "0.0"),
            ("bos_token_id", "\(bos)"),
            ("dtype", "\"float32\""),
            ("eos_token_id", "\(eos)"),
            ("head_dim", "\(c.headDim)"),
            ("hidden_act", "\"silu\""),
            ("hidden_size", "\(c.dModel)"),
            ("initializer_range", "0.02"),
            ("intermediate_size", "\(c.intermediate)"),
            ("max_position_embeddings", "\(c.blockSize)"),
            ("mlp_bias", "false"),
            ("model_type", "\"llama\""),
            ("num_attention_heads", "\(c.nHead)"),
            ("num_hidden_layers", "\(c.nLayer)"),
            ("num_key_value_heads", "\(c.nKVHead)"),
            ("rms_norm_eps", "\(Double(c.rmsEps))"),
            ("rope_parameters", "{\"rope_theta\": \(c.ropeTheta), \"rope_type\": \"default\"}"),
            ("rope_theta", "\(c.ropeTheta)"),  // for transformers releases before rope_parameters
            ("tie_word_embeddings", c.tied ? "true" : "false"),
            ("use_cache", "true"),
            ("vocab_size", "\(c.vocabSize)"),
        ]
        return "{\n" + fields.map { "  \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}\n"
    }

    /// Writes `dir`/config.json and `dir`/model.safetensors (making `dir` if needed). Returns the two paths.
    @discardableResult
    public static func write(_ model: Llama, to dir: String) throws -> (config: String, weights: String) {
        try HFExport.writeDirectory(dir, params: model.params, config: configJSON(model.config))
    }

    /// The architecture a Hugging Face Llama directory's config.json describes (errors name the file and key).
    public static func config(dir: String) throws -> TransformerConfig {
        let path = dir + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else { throw TrainingError("\(path): cannot read the file") }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw TrainingError("\(path): not a JSON object")
        }
        if let t = j["model_type"] as? String, t != "llama" {
            throw TrainingError("\(path): model_type is \"\(t)\", expected \"llama\"")
        }
        func int(_ k: String, default d: Int? = nil) throws -> Int {
            if let v = j[k] as? Int { return v }
            if let d, j[k] == nil || j[k] is NSNull { return d }
            throw TrainingError("\(path): \"\(k)\" must be an integer")
        }
        func double(_ k: String, default d: Double) throws -> Double {
            if j[k] == nil || j[k] is NSNull { return d }
            guard let v = j[k] as? Double else { throw TrainingError("\(path): \"\(k)\" must be a number") }
            return v
        }
        let heads = try int("num_attention_heads"), hidden = try int("hidden_size")
        let kv = try int("num_key_value_heads", default: heads)
        if let hd = j["head_dim"] as? Int, hd * heads != hidden {
            throw TrainingError("\(path): head_dim \(hd) × \(heads) heads is not hidden_size \(hidden) (Tessera needs them equal)")
        }
        guard hidden % heads == 0, heads % kv == 0 else {
            throw TrainingError("\(path): \(heads) heads must divide hidden_size \(hidden), and \(kv) key/value heads the heads")
        }
        var theta = try double("rope_theta", default: 10_000)
        if let rope = j["rope_parameters"] as? [String: Any] ?? j["rope_scaling"] as? [String: Any] {
            if let type = (rope["rope_type"] ?? rope["type"]) as? String, type != "default" {
                throw TrainingError("\(path): rope type \"\(type)\" is not supported (only \"default\")")
            }
            if let t = rope["rope_theta"] as? Double { theta = t }
        }
        if let act = j["hidden_act"] as? String, act != "silu" {
            throw TrainingError("\(path): hidden_act \"\(act)\", expected \"silu\"")
        }
        for k in ["attention_bias", "mlp_bias"] where j[k] as? Bool == true {
            throw TrainingError("\(path): \"\(k)\" is true; Tessera's Llama has no biases")
        }
        return .llama(vocabSize: try int("vocab_size"), nLayer: try int("num_hidden_layers"), nHead: heads, nKVHead: kv,
                           dModel: hidden, intermediate: try int("intermediate_size"),
                           blockSize: try int("max_position_embeddings"),
                           rmsEps: Float(try double("rms_norm_eps", default: 1e-6)), ropeTheta: theta,
                           tied: j["tie_word_embeddings"] as? Bool ?? false)
    }

    /// A Llama with the directory's weights (model.safetensors): every tensor present with its shape, no other (the
    /// copying is HFImport's).
    public static func load(dir: String) throws -> Llama {
        let model = Llama(config: try config(dir: dir), seed: 0)
        let path = dir + "/model.safetensors"
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: path) } catch { throw TrainingError("\(error)") }
        let names = Set(model.params.specs.map(\.name))
        // Not parameters: the rotary tables older files store, and a tied head written out anyway.
        func ignorable(_ name: String) -> Bool {
            name.hasSuffix("rotary_emb.inv_freq") || (model.config.tied && name == "lm_head.weight")
        }
        if let extra = file.entries.keys.sorted().first(where: { !names.contains($0) && !ignorable($0) }) {
            throw TrainingError("\(path): tensor '\(extra)' is not a parameter of this Llama (config \(dir)/config.json)")
        }
        try HFImport.load(dir: dir, into: model.params)  // every parameter present, with its shape, finite
        return model
    }
}
