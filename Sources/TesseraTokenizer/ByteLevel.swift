// GPT-2's byte-level alphabet: every byte as one printable Unicode scalar, so that a vocabulary of strings can
// hold any byte sequence. The 188 bytes that are printable Latin-1 ('!'...'~', '¡'...'¬', '®'...'ÿ') stand for
// themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen...) take U+0100, U+0101, ... in byte order,
// so the space 0x20 is 'Ġ' (U+0120) and the newline 0x0A is 'Ċ' (U+010A).

public enum ByteLevel {
    /// The scalar that stands for each byte, indexed by the byte.
    public static let scalars: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if isPrintable(UInt8(byte)) {
                table[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                table[byte] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The inverse of `scalars`: the byte each alphabet scalar stands for.
    public static let bytes: [Unicode.Scalar: UInt8] = {
        var inverse: [Unicode.Scalar: UInt8] = [:]
        for (byte, scalar) in scalars.enumerated() { inverse[scalar] = UInt8(byte) }
        return inverse
    }()

    /// True for the 188 bytes that map to themselves.
    static func isPrintable(_ byte: UInt8) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }

    /// The byte-level string of some bytes (one alphabet scalar per byte).
    public static func string<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var view = String.UnicodeScalarView()
        for byte in bytes { view.append(scalars[Int(byte)]) }
        return String(view)
    }

    /// The bytes of a byte-level string, or nil if it holds a scalar outside the alphabet.
    public static func decode(_ string: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(string.unicodeScalars.count)
        for scalar in string.unicodeScalars {
            guard let byte = bytes[scalar] else { return nil }
            out.append(byte)
        }
        return out
    }
}
