// Hugging Face export (docs/export.md): a directory that transformers' GPT2LMHeadModel.from_pretrained
// loads as it is.
//   config.json        a GPT2Config: the model's shape; GELU tanh approximation ("gelu_new") and LayerNorm
//                      eps 1e-5 as Tessera's kernels compute them; no dropout; LM head tied to wte
//   model.safetensors  every parameter as F32 under its Hugging Face name and layout (Tessera's own names:
//                      Conv1D weights [in, out]); no lm_head.weight (tied, as save_pretrained writes it);
//                      header metadata {"format": "pt"}, which transformers requires

import Foundation
import TesseraKernels
import TesseraModel

public enum HFExport {
    /// GPT2Config as JSON text, keys sorted. bos/eos: the tokenizer's end-of-text id when the run has one; else 0,
    /// the token an empty prompt starts from (Sampler).
    public static func configJSON(_ c: TransformerConfig, bos: Int = 0, eos: Int = 0) -> String {
        let fields: [(String, String)] = [
            ("activation_function", "\"gelu_new\""),
            ("architectures", "[\"GPT2LMHeadModel\"]"),
            ("attn_pdrop", "0.0"),
            ("bos_token_id", "\(bos)"),
            ("dtype", "\"float32\""),
            ("embd_pdrop", "0.0"),
            ("eos_token_id", "\(eos)"),
            ("initializer_range", "0.02"),
            ("layer_norm_epsilon", layerNormEpsilonLiteral),
            ("model_type", "\"gpt2\""),
            ("n_embd", "\(c.dModel)"),
            ("n_head", "\(c.nHead)"),
            ("n_inner", "null"),
            ("n_layer", "\(c.nLayer)"),
            ("n_positions", "\(c.blockSize)"),
            ("pad_token_id", "null"),
            ("reorder_and_upcast_attn", "false"),
            ("resid_pdrop", "0.0"),
            ("scale_attn_by_inverse_layer_idx", "false"),
            ("scale_attn_weights", "true"),
            ("tie_word_embeddings", "true"),
            ("use_cache", "true"),
            ("vocab_size", "\(c.vocabSize)"),
        ]
        return "{\n" + fields.map { "  \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}\n"
    }

    /// LayerNorm's eps as a JSON number (the kernel's constant, 1e-5).
    static var layerNormEpsilonLiteral: String {
        LayerNorm.eps == 1e-5 ? "1e-05" : "\(Double(LayerNorm.eps))"
    }

    /// Writes `dir`/config.json and `dir`/model.safetensors (making `dir` if needed). Returns the two paths.
    @discardableResult
    /// A Llama model is written as `LlamaForCausalLM` (LlamaHF); `endOfText` (the tokenizer's) is its bos and eos,
    /// else Llama's own 1 and 2, GPT-2's 0.
    public static func write(model: Transformer, to dir: String, endOfText: Int? = nil) throws -> (config: String, weights: String) {
        let c = model.config
        let json = c.family == .llama ? LlamaHF.configJSON(c, bos: endOfText ?? 1, eos: endOfText ?? 2)
                                      : configJSON(c, bos: endOfText ?? 0, eos: endOfText ?? 0)
        return try writeDirectory(dir, params: model.params, config: json)
    }

    /// The run's tokenizer beside the weights, as transformers' AutoTokenizer loads it: tokenizer.json as it is,
    /// tokenizer_config.json (a fast tokenizer, `token` as bos and eos, no prefix space) and special_tokens_map.json.
    public static func writeTokenizer(from path: String, token: String, to dir: String, maxLength: Int) throws {
        let files: [(String, String)] = [
            ("tokenizer_config.json", "{\n  \"add_prefix_space\": false,\n  \"bos_token\": \(jsonString(token)),\n"
             + "  \"clean_up_tokenization_spaces\": false,\n  \"eos_token\": \(jsonString(token)),\n"
             + "  \"model_max_length\": \(maxLength),\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n"),
            ("special_tokens_map.json", "{\n  \"bos_token\": \(jsonString(token)),\n  \"eos_token\": \(jsonString(token))\n}\n"),
        ]
        do {
            let target = dir + "/tokenizer.json"
            // Exporting into the tokenizer's own directory: the file is already there (removing it would lose it).
            let same = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath()
                == URL(fileURLWithPath: target).standardizedFileURL.resolvingSymlinksInPath()
            if !same {
                if FileManager.default.fileExists(atPath: target) { try FileManager.default.removeItem(atPath: target) }
                try FileManager.default.copyItem(atPath: path, toPath: target)
            }
            for (name, text) in files { try text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8) }
        } catch {
            throw TrainingError("\(dir): cannot write the tokenizer files (from \(path)): \((error as NSError).localizedDescription)")
        }
    }

    static func jsonString(_ s: String) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: [s]), as: UTF8.self).dropFirst().dropLast().description
    }

    /// `dir`/model.safetensors (every tensor of `params` under its name, F32, metadata {"format": "pt"}) and
    /// `dir`/config.json (`config`), making `dir` if needed. Returns the two paths.
    static func writeDirectory(_ dir: String, params p: ParameterSet, config: String) throws -> (config: String, weights: String) {
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw TrainingError("\(dir): cannot create the export directory: \((error as NSError).localizedDescription)")
        }
        let configPath = dir + "/config.json", weightsPath = dir + "/model.safetensors"
        let tensors = p.specs.enumerated().map { i, s in
            (name: s.name, shape: s.shape, values: UnsafeBufferPointer(start: p.pointer(i), count: s.count))
        }
        try SafeTensorsFile.write(path: weightsPath, tensors: tensors, metadata: ["format": "pt"])
        do { try config.write(toFile: configPath, atomically: true, encoding: .utf8) } catch {
            throw TrainingError("\(configPath): cannot write: \((error as NSError).localizedDescription)")
        }
        return (configPath, weightsPath)
    }
}
