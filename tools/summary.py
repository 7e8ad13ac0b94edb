"""Print the test run's totals from the JUnit reports the steps wrote (and the step times)."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

reports, seconds = Path(sys.argv[1]), int(sys.argv[2])
passed = failed = skipped = 0
for xml in sorted(reports.glob("*.xml")):
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        n, f = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        s = int(suite.get("skipped", 0))
        passed, failed, skipped = passed + n - f - s, failed + f, skipped + s
print((reports / "times.txt").read_text().rstrip())
print(f"[test] whole run: {seconds // 60} min {seconds % 60} s")
print(f"test run: {passed} passed, {failed} failed, {skipped} skipped")
