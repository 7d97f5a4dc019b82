// Settings the configuration can describe but this build or machine cannot run. A feature that lands
// before it runs everywhere adds a check here, so the config fails early with a clear message.

import TesseraKernels

extension TesseraConfig {
    /// Rejects settings this build or machine cannot run; throws a ConfigError listing each one.
    public func validateForThisBuild() throws {
        var errors: [String] = []
        if precision == .bf16, let e = ProductBackend.configurationError {
            errors.append("training.precision = \"bf16\": \(e)")
        }
        if let e = BlockProduct.configurationError { errors.append("the attention kernel: \(e)") }
        guard errors.isEmpty else { throw ConfigError(lines: errors) }
    }
}
