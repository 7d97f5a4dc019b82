// Reading and writing the safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw data.

import Foundation

public struct SafeTensorsError: Error, CustomStringConvertible {
    public let description: String
}

public struct SafeTensorsFile {
    public struct Entry { public let dtype: String; public let shape: [Int]; public let begin: Int; public let end: Int }
    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    private let data: Data
    private let dataStart: Int

    public init(path: String) throws {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw SafeTensorsError(description: "\(path): cannot read safetensors file")
        }
        guard d.count >= 8 else { throw SafeTensorsError(description: "\(path): file too short for a safetensors header") }
        let raw = d.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard raw > 0, raw <= UInt64(d.count - 8), case let n = Int(raw) else { throw SafeTensorsError(description: "\(path): header length \(raw) exceeds file size \(d.count)") }
        guard let json = try JSONSerialization.jsonObject(with: d.subdata(in: 8..<(8 + n))) as? [String: Any] else {
            throw SafeTensorsError(description: "\(path): header is not a JSON object")
        }
        var entries: [String: Entry] = [:], meta: [String: String] = [:]
        for (k, v) in json {
            if k == "__metadata__" { meta = (v as? [String: String]) ?? [:]; continue }
            guard let e = v as? [String: Any], let dt = e["dtype"] as? String, let shape = e["shape"] as? [Int],
                  let offs = e["data_offsets"] as? [Int], offs.count == 2 else {
                throw SafeTensorsError(description: "\(path): malformed header entry for '\(k)'")
            }
            let elementBytes = dt == "F64" || dt == "I64" ? 8 : dt == "F16" || dt == "BF16" || dt == "I16" || dt == "U16" ? 2 : 4
            guard offs[0] >= 0, offs[0] <= offs[1], offs[1] <= d.count - 8 - n,
                  offs[1] - offs[0] == shape.reduce(1, *) * elementBytes else {
                throw SafeTensorsError(description: "\(path): tensor '\(k)' data_offsets \(offs) lie outside the file or do not match shape \(shape) of \(dt)")
            }
            entries[k] = Entry(dtype: dt, shape: shape, begin: offs[0], end: offs[1])
        }
        self.path = path; self.entries = entries; self.metadata = meta; self.data = d; self.dataStart = 8 + n
    }

    /// The tensor as Float values (F32 or F64 on disk).
    public func floats(_ name: String) throws -> [Float] {
        guard let e = entries[name] else { throw SafeTensorsError(description: "\(path): no tensor named '\(name)'") }
        let bytes = data.subdata(in: (dataStart + e.begin)..<(dataStart + e.end))
        switch e.dtype {
        case "F32": return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        case "F64": return bytes.withUnsafeBytes { $0.bindMemory(to: Double.self).map { Float($0) } }
        default: throw SafeTensorsError(description: "\(path): tensor '\(name)' has dtype \(e.dtype), expected F32 or F64")
        }
    }

    /// Writes F32 tensors (in the order given) with optional metadata.
    public static func write(path: String, tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)],
                             metadata: [String: String] = [:]) throws {
        var header: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            let bytes = t.values.count * 4
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for t in tensors { out.append(UnsafeBufferPointer(start: t.values.baseAddress, count: t.values.count)) }
        do { try out.write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
            throw SafeTensorsError(description: "\(path): cannot write safetensors file: \(error.localizedDescription)")
        }
    }
}
