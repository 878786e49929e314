"""prepare's units on Ray: a local Ray with 2 CPUs gives the bytes of the local engine.

One module, one Ray for all its tests (starting Ray costs seconds); CI installs the `ray` extra.
"""

import pytest

from ov_packing.work_units import use_this_python
from ov_train.data.prepare import prepare


def _all_bytes(folder):
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    use_this_python()  # workers run this interpreter, not `uv run` again (see its docstring)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_ray_engine_writes_the_bytes_of_the_local_engine(
    local_ray, tmp_path, raw_corpus, processor, config_for, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = prepare(config_for(raw_corpus.inputs, tmp_path / "local", unit_rows=4), processor)
    config = config_for(
        raw_corpus.inputs, tmp_path / "ray", unit_rows=4, engine="ray", workers=None
    )
    on_ray = prepare(config, processor)
    assert on_ray.measuring.engine == "Ray engine (local Ray)"
    assert len(on_ray.measuring.done) == 9
    assert _all_bytes(on_ray.out_dir) == _all_bytes(local.out_dir)
