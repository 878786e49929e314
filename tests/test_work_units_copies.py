"""`work_units.py` is one file kept in two packages (ov_packing and ov_concepts depend on no other
workspace member); the copies must stay byte-identical."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_two_copies_of_work_units_are_identical():
    source = ROOT / "packages/ov_packing/src/ov_packing/work_units.py"
    copy = ROOT / "packages/ov_concepts/src/ov_concepts/work_units.py"
    assert copy.read_bytes() == source.read_bytes(), f"{copy} differs from {source}; copy it again"


def test_the_ov_concepts_copy_imports_on_its_own():
    from ov_concepts import work_units

    assert work_units.WorkUnit("a", ("x",)).outputs == ("x",)
    assert work_units.run_units.__module__ == "ov_concepts.work_units"
