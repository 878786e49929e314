"""Fail unless every test root (each package's tests/ and the root tests/) ran at least one test,
and every module named in MUST_RUN ran all its tests (none skipped).

pytest exits 0 when a folder silently contributes nothing (a renamed file, a bad pattern), so the
JUnit report is checked root by root: at least one test executed and not skipped. Modules that
skip themselves when a system tool or an extra is missing (the chat-page test without chromium, the
Ray engine tests without the ray extra) are listed in MUST_RUN: CI installs them, so a skip there
means the install went wrong.
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


MUST_RUN = (
    "packages.ov_model.tests.serve.test_chat_page",
    # the Ray engine on a local Ray (CI installs the ray extras)
    "packages.ov_packing.tests.test_ray_engine",
    "packages.ov_concepts.tests.test_ray_engine",
    "packages.ov_train.tests.data.test_prepare_ray",
)
"""Modules whose tests must all run in CI (CI installs what they need)."""


def main(report: str) -> int:
    ran: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for case in ET.parse(report).iter("testcase"):
        if case.find("skipped") is None:
            ran[case.attrib["classname"]] += 1
        else:
            skipped[case.attrib["classname"]] += 1
    failures = 0
    for module in MUST_RUN:
        count = sum(n for name, n in ran.items() if name.startswith(module))
        missed = sum(n for name, n in skipped.items() if name.startswith(module))
        print(f"{module:<48} {count:>3} ran, {missed} skipped")
        if count == 0 or missed:
            print(f"error: {module} must run all its tests in CI", file=sys.stderr)
            failures += 1
    for root in test_roots():
        count = sum(n for name, n in ran.items() if name.startswith(root))
        print(f"{root:<32} {count:>5} tests ran")
        if count == 0:
            print(f"error: no test ran under {root.replace('.', '/')}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
