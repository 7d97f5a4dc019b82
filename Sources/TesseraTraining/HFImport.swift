// `model.init_from`: training starts from a Hugging Face directory of the configured family (what `tessera
// export --hf` writes, or a GPT2LMHeadModel / GPT2Model / LlamaForCausalLM / LlamaModel saved by transformers).
// Its config.json must describe the configured model (every mismatch named with the config key and the file's
// key), and model.safetensors must hold every parameter with its shape. Each rank copies the tensors its stage
// holds; names may lack the "transformer." / "model." prefix (the bare GPT2Model / LlamaModel); other tensors
// (attention-mask or rotary buffers older files carry, a tied lm_head.weight) are not parameters and are not read.

import Foundation
import TesseraKernels
import TesseraModel

public enum HFImport {
    /// Differences between the directory's config.json and the configured model, one line each (empty: it fits).
    public static func mismatches(dir: String, model m: ModelConfig) throws -> [String] {
        let path = dir + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainingError("model.init_from = '\(dir)': cannot read \(path)")
        }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw TrainingError("model.init_from = '\(dir)': \(path) is not a JSON object")
        }
        var out: [String] = []
        let family = m.family == ModelFamily.llama.rawValue ? "llama" : "gpt2"
        if let t = j["model_type"] as? String, t != family {
            return ["\(path): model_type is \"\(t)\", but model.family = \"\(m.family)\" expects \"\(family)\""]
        }
        if family == "llama" { out = llamaMismatches(dir: dir, path: path, model: m) } else { out = gptMismatches(j, path: path, model: m) }
        guard out.isEmpty else { return out }
        // Every tensor of the whole model, checked here (on every rank) rather than only by the stage that
        // needs it, so a bad file stops every rank at start instead of one rank in the middle of a collective.
        let weights = dir + "/model.safetensors"
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: weights) } catch { return ["\(error)"] }
        for s in ModelParameters.specs(m.transformer) {
            guard let name = storedName(s.name, in: file) else { out.append("\(weights): no tensor '\(s.name)'"); continue }
            if file.entries[name]!.shape != s.shape {
                out.append("\(weights): tensor '\(name)' has shape \(file.entries[name]!.shape), the model needs \(s.shape)")
            }
        }
        return out
    }

    /// A Llama directory's config.json (read as LlamaHF reads it) against the [model] keys.
    static func llamaMismatches(dir: String, path: String, model m: ModelConfig) -> [String] {
        let theirs: TransformerConfig
        do { theirs = try LlamaHF.config(dir: dir) } catch { return ["\(error)"] }
        let ours = m.transformer
        var out: [String] = []
        let ints: [(String, String, Int, Int)] = [
            ("vocab_size", "vocab_size", ours.vocabSize, theirs.vocabSize), ("n_layer", "num_hidden_layers", ours.nLayer, theirs.nLayer),
            ("n_head", "num_attention_heads", ours.nHead, theirs.nHead), ("n_kv_head", "num_key_value_heads", ours.nKVHead, theirs.nKVHead),
            ("d_model", "hidden_size", ours.dModel, theirs.dModel), ("intermediate_size", "intermediate_size", ours.intermediate, theirs.intermediate),
            ("block_size", "max_position_embeddings", ours.blockSize, theirs.blockSize)]
        for (key, their, a, b) in ints where a != b { out.append("model.\(key) = \(a), but \(path) has \(their) = \(b)") }
        if abs(Double(ours.rmsEps) - Double(theirs.rmsEps)) > 1e-12 {
            out.append("model.rms_norm_eps = \(m.rmsNormEps), but \(path) has rms_norm_eps = \(Double(theirs.rmsEps))")
        }
        if ours.ropeTheta != theirs.ropeTheta { out.append("model.rope_theta = \(ours.ropeTheta), but \(path) has rope_theta = \(theirs.ropeTheta)") }
        if ours.tied != theirs.tied {
            out.append("model.tie_word_embeddings = \(ours.tied), but \(path) has tie_word_embeddings = \(theirs.tied)")
        }
        return out
    }

    /// A GPT-2 directory's config.json against the [model] keys.
    static func gptMismatches(_ j: [String: Any], path: String, model m: ModelConfig) -> [String] {
        var out: [String] = []
        for (key, theirs, ours) in [("vocab_size", "vocab_size", m.vocabSize), ("n_layer", "n_layer", m.nLayer),
                                    ("n_head", "n_head", m.nHead), ("d_model", "n_embd", m.dModel),
                                    ("block_size", "n_positions", m.blockSize)] {
            let v = j[theirs] as? Int
            if v != ours { out.append("model.\(key) = \(ours), but \(path) has \(theirs) = \(v.map(String.init) ?? "none")") }
        }
        if let act = j["activation_function"] as? String, !["gelu_new", "gelu_pytorch_tanh"].contains(act) {
            out.append("\(path): activation_function \"\(act)\"; Tessera computes GELU's tanh approximation (gelu_new)")
        }
        if let eps = j["layer_norm_epsilon"] as? Double, abs(eps - Double(LayerNorm.eps)) > 1e-12 {
            out.append("\(path): layer_norm_epsilon \(eps); Tessera's LayerNorm uses \(Double(LayerNorm.eps))")
        }
        if let inner = j["n_inner"] as? Int, inner != 4 * m.dModel {
            out.append("\(path): n_inner \(inner); Tessera's MLP is 4 × d_model = \(4 * m.dModel)")
        }
        if j["tie_word_embeddings"] as? Bool == false {
            out.append("\(path): tie_word_embeddings is false; Tessera's GPT-2 ties the LM head to wte")
        }
        return out
    }

    /// The name under which `file` stores parameter `name` (with or without the "transformer." / "model." prefix).
    static func storedName(_ name: String, in file: SafeTensorsFile) -> String? {
        let prefix = ["transformer.", "model."].first { name.hasPrefix($0) }
        let bare = prefix.map { String(name.dropFirst($0.count)) } ?? name
        return [name, bare].first { file.entries[$0] != nil }
    }

    /// Copies every tensor of `params` from `dir`/model.safetensors (checked: present, right shape, finite).
    public static func load(dir: String, into params: ParameterSet) throws {
        let path = dir + "/model.safetensors"
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: path) } catch { throw TrainingError("model.init_from = '\(dir)': \(error)") }
        for (i, s) in params.specs.enumerated() {
            guard let name = storedName(s.name, in: file) else {
                throw TrainingError("\(path): no tensor '\(s.name)' (model.init_from = '\(dir)')")
            }
            guard file.entries[name]!.shape == s.shape else {
                throw TrainingError("\(path): tensor '\(name)' has shape \(file.entries[name]!.shape), the model needs \(s.shape)")
            }
            let w: [Float]
            do { w = try file.floats(name) } catch { throw TrainingError("\(error)") }
            guard w.allSatisfy({ $0.isFinite }) else { throw TrainingError("\(path): tensor '\(name)' has non-finite values") }
            params.pointer(i).update(from: w, count: s.count)
        }
    }
}
