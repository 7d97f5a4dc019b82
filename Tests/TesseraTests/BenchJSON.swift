import Foundation
import XCTest

/// The JSON report lines a `tessera bench* --json` run printed for `bench` (objects whose "bench" is that name).
func benchReports(_ output: String, bench: String, file: StaticString = #filePath, line: UInt = #line) -> [[String: Any]] {
    var reports: [[String: Any]] = []
    for l in output.split(separator: "\n") where l.hasPrefix("{") {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(l.utf8))) as? [String: Any] else {
            XCTFail("not a JSON object: \(l)", file: file, line: line); continue
        }
        if o["bench"] as? String == bench { reports.append(o) }
    }
    return reports
}

/// A number of a JSON report (nil when absent).
func number(_ report: [String: Any], _ key: String) -> Double? { (report[key] as? NSNumber)?.doubleValue }

/// A list of numbers of a JSON report (empty when absent).
func numbers(_ report: [String: Any], _ key: String) -> [Double] {
    (report[key] as? [Any] ?? []).compactMap { ($0 as? NSNumber)?.doubleValue }
}
