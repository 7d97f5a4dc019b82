import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The repository root (this file is Tests/TesseraTests/TestSupport.swift).
let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// ../shared/reference beside the repository (CI clones the repository with shared/ beside it).
let referenceDir = repoRoot.deletingLastPathComponent().appendingPathComponent("shared/reference/gpt2-tiny")

/// ||a - b|| / max(||b||, tiny)
func relErr(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count, "size mismatch \(a.count) vs \(b.count)")
    var num = 0.0, den = 0.0
    for i in 0..<a.count {
        let d = Double(a[i]) - Double(b[i]); num += d * d; den += Double(b[i]) * Double(b[i])
    }
    return (num / max(den, 1e-30)).squareRoot()
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// Deterministic pseudo-random floats in [-scale, scale).
func randomFloats(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    (0..<n).map { i in
        let h = Initializer.mix(seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i))
        return (Float(h >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}

extension Array where Element == Float {
    /// Runs body with a mutable pointer to the array's storage.
    mutating func ptr<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R {
        try withUnsafeMutableBufferPointer { try body($0.baseAddress!) }
    }
}

func copyArray(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

/// This test process's directory `PREFIX-PID` under the temporary directory (not created here). Every such
/// directory is removed when the test process exits, so a run leaves nothing behind in /tmp.
func scratchDirectory(_ prefix: String) -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(getpid())")
    ScratchDirectories.register(url)
    return url
}

/// `scratchDirectory(prefix)`, created.
func madeScratchDirectory(_ prefix: String) -> URL {
    let url = scratchDirectory(prefix)
    try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

enum ScratchDirectories {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var urls: Set<URL> = []
    nonisolated(unsafe) private static var installed = false

    static func register(_ url: URL) {
        lock.lock(); defer { lock.unlock() }
        urls.insert(url)
        if !installed {
            installed = true
            atexit { ScratchDirectories.removeAll() }
        }
    }

    static func removeAll() {
        lock.lock(); defer { lock.unlock() }
        for url in urls { try? FileManager.default.removeItem(at: url) }
    }
}

/// Creates `dir` and writes DIR/text.txt, `lines` lines of byte-level training text; returns its path.
@discardableResult
func writeTrainingText(in dir: URL, lines: Int) throws -> String {
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    var text = ""
    for i in 0..<lines { text += "Line \(i % 23): the quick brown fox jumps over \(i % 7) lazy dogs.\n" }
    let url = dir.appendingPathComponent("text.txt")
    try text.write(to: url, atomically: true, encoding: .utf8)
    return url.path
}

/// The python of the Hugging Face venv (torch, transformers, tokenizers) that scripts/hf_venv.sh makes in the
/// package's .build/hf-venv on first use, so nothing lands in the home directory's caches. Throws XCTSkip (saying
/// so, after `who` and what is skipped) only when pip cannot reach the package index; any other failure of the
/// set-up fails the calling test and returns nil.
func huggingFacePython(_ who: String, skipping what: String) throws -> String? {
    let venv = repoRoot.appendingPathComponent(".build/hf-venv").path
    let (status, setup) = try runProcess(["bash", repoRoot.path + "/scripts/hf_venv.sh", venv], timeout: 1800)
    if status == 3 {
        print("\(who): skipping \(what): pip cannot reach the package index\n\(setup)")
        throw XCTSkip("pip cannot reach the package index to install torch and transformers")
    }
    XCTAssertEqual(status, 0, "scripts/hf_venv.sh failed:\n\(setup)")
    guard status == 0 else { return nil }
    print(setup.split(separator: "\n").filter { $0.hasPrefix("hf_venv:") }.joined(separator: "\n"))
    return String(try XCTUnwrap(setup.split(separator: "\n").last))
}

/// A command through /usr/bin/env with Open MPI's root and oversubscription settings (not started).
func testProcess(_ argv: [String]) -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = argv
    var env = ProcessInfo.processInfo.environment
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"; env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"; env["OPENBLAS_NUM_THREADS"] = "1"
    p.environment = env
    return p
}

/// Runs a command (through /usr/bin/env) with a time limit; returns (exit status, stdout + stderr).
/// MPI jobs get Open MPI's root and oversubscription settings.
func runProcess(_ argv: [String], timeout: TimeInterval = 300) throws -> (Int32, String) {
    let p = testProcess(argv)
    let pipe = Pipe()
    p.standardOutput = pipe; p.standardError = pipe
    try p.run()
    let killer = DispatchWorkItem { if p.isRunning { p.terminate() } }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
    let data = pipe.fileHandleForReading.readDataToEndOfFile()  // read before waiting: no pipe-full deadlock
    p.waitUntilExit()
    killer.cancel()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Runs scripts/hf_logits.py on an exported directory (transformers' AutoModelForCausalLM) and returns its JSON
/// report after checking the load was clean: no unexpected or mismatched keys, no errors, nothing missing but
/// `lm_head.weight` when `tied` (a tied head is not saved). Nil when the script failed (reported).
func huggingFaceLogits(python: String, dir: String, ids: [Int32], tied: Bool, file: StaticString = #filePath,
                       line: UInt = #line) throws -> [String: Any]? {
    let result = dir + "/hf-logits.json"
    let (status, out) = try runProcess([python, repoRoot.path + "/scripts/hf_logits.py", dir,
                                        ids.map(String.init).joined(separator: ","), result], timeout: 600)
    XCTAssertEqual(status, 0, out, file: file, line: line)
    guard status == 0 else { return nil }
    let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: result))) as? [String: Any])
    let info = try XCTUnwrap(json["loading_info"] as? [String: [String]])
    XCTAssertEqual(info["unexpected_keys"] ?? [], [], "\(info)", file: file, line: line)
    XCTAssertEqual(info["mismatched_keys"] ?? [], [], "\(info)", file: file, line: line)
    XCTAssertEqual(info["error_msgs"] ?? [], [], "\(info)", file: file, line: line)
    XCTAssertTrue((info["missing_keys"] ?? []).allSatisfy { tied && $0 == "lm_head.weight" }, "\(info)", file: file, line: line)
    XCTAssertEqual(json["tied"] as? Bool, tied, "the LM head's tie to the input embeddings", file: file, line: line)
    return json
}

/// A model's logits [ids.count, vocab] for one sequence at positions 0 ..< ids.count.
func tesseraLogits(_ model: Transformer, ids: [Int32]) -> [Float] {
    let acts = model.activations(batch: 1, tokens: ids.count, training: false)
    for (i, id) in ids.enumerated() { acts.tokenIds[i] = id }
    acts.setContiguousPositions()
    model.forwardBody(acts, saving: false)
    var out = [Float](repeating: 0, count: ids.count * model.config.vocabSize)
    out.ptr { model.logits(acts, into: $0) }
    return out
}

/// Fails unless `expr` throws an error whose description contains every one of `parts`.
func assertThrows(_ expr: () throws -> Void, mentioning parts: [String],
                  file: StaticString = #filePath, line: UInt = #line) {
    do {
        try expr()
        XCTFail("expected an error mentioning \(parts)", file: file, line: line)
    } catch {
        let msg = "\(error)"
        for p in parts { XCTAssertTrue(msg.contains(p), "error \"\(msg)\" does not mention \"\(p)\"", file: file, line: line) }
    }
}
