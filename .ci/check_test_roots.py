"""Fail unless every test root (each package's tests/ and the root tests/) ran at least one test.

pytest exits 0 when a folder silently contributes nothing (a renamed file, a bad pattern), so the
JUnit report is checked root by root: at least one test executed and not skipped.
"""

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_roots() -> list[str]:
    """Dotted class-name prefixes of every test root, as pytest's importlib mode reports them."""
    roots = [
        f"packages.{path.parent.name}.tests." for path in sorted(ROOT.glob("packages/*/tests"))
    ]
    return [*roots, "tests."]


def main(report: str) -> int:
    ran: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        if case.find("skipped") is None:
            ran[case.attrib["classname"]] += 1
    failures = 0
    for root in test_roots():
        count = sum(n for name, n in ran.items() if name.startswith(root))
        print(f"{root:<32} {count:>5} tests ran")
        if count == 0:
            print(f"error: no test ran under {root.replace('.', '/')}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
