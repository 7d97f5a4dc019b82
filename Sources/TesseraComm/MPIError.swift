// MPI errors as Swift errors. Communicators return error codes (MPI_ERRORS_RETURN); every call goes
// through `check`, which turns a failure into an MPIError carrying the operation, the rank and
// MPI_Error_string's text. Errors the job cannot recover from end it through `MPIRuntime.abort`.

import CMPI

public struct MPIError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let rank: Int
    public let code: Int32
    public let message: String

    public var description: String { "rank \(rank): \(operation) failed: \(message) (MPI error \(code))" }

    /// MPI_Error_string of a code.
    public static func text(_ code: Int32) -> String {
        var buf = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
        var len: Int32 = 0
        MPI_Error_string(code, &buf, &len)
        return String(decoding: buf.prefix(Int(len)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

@inline(__always)
func check(_ rc: Int32, _ operation: @autoclosure () -> String, rank: Int) throws {
    if rc != MPI_SUCCESS { throw MPIError(operation: operation(), rank: rank, code: rc, message: MPIError.text(rc)) }
}
