"""The Ray engine of `ov_packing.work_units` on a local Ray with 2 CPUs: the same units give the
same bytes as the local engine (generic units and packed shards), and a failing unit is named.
One module, one Ray start (several seconds)."""

import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ov_packing.shards import write_shards  # noqa: E402
from ov_packing.work_units import (  # noqa: E402
    LocalEngine,
    RayEngine,
    UnitFailed,
    run_units,
    use_this_python,
)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import ov_packing_unit_tasks  # noqa: E402
from ov_packing_unit_tasks import ChainTask, chain_units  # noqa: E402
from test_shards import _make_plan, _tree, _write_tar  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    # the test helpers are not installed: ship their module to the workers by value
    ray.cloudpickle.register_pickle_by_value(ov_packing_unit_tasks)
    use_this_python()  # workers run this interpreter, not `uv run` again (see its docstring)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with RayEngine() as engine:  # its two actors serve every test (started once)
        yield engine
    ray.shutdown()


def test_ray_units_give_the_local_engines_bytes(local_ray, tmp_path):
    units = chain_units(6)
    run_units(
        ChainTask(),
        units,
        tmp_path / "local",
        engine=LocalEngine(1),
        job_digest="j",
        progress=False,
    )
    report = run_units(
        ChainTask(), units, tmp_path / "ray", engine=local_ray, job_digest="j", progress=False
    )
    assert report.done == tuple(unit.key for unit in units)
    assert report.engine == "Ray engine (local Ray)"
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def test_ray_writes_the_same_shards_as_the_local_engine(local_ray, tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    keys = [f"k{number:02d}" for number in range(12)]
    source = _write_tar(
        tmp_path / "src.tar",
        [
            (f"{key}.{ext}", rng.bytes(int(rng.integers(1, 900))))
            for key in keys
            for ext in ("jpg", "txt")
        ],
    )
    plan = _make_plan(keys, [[0, 5], [3], [7, 1, 2], [11], [4, 6], [9, 8, 10]])
    write_shards(plan, [source], tmp_path / "local", max_bins_per_shard=2)
    write_shards(plan, [source], tmp_path / "ray", max_bins_per_shard=2, engine=local_ray)
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")


def test_a_failing_ray_unit_is_named_with_its_own_exception(local_ray, tmp_path):
    with pytest.raises(UnitFailed, match=r"work unit 'u-0001' failed: ValueError") as error:
        run_units(
            ChainTask(fail_key="u-0001"),
            chain_units(3),
            tmp_path,
            engine=local_ray,
            job_digest="j",
            progress=False,
        )
    assert isinstance(error.value.error, ValueError)
    assert not (tmp_path / ".units" / "u-0001.json").exists()
    rerun = run_units(
        ChainTask(), chain_units(3), tmp_path, engine=local_ray, job_digest="j", progress=False
    )
    assert "u-0001" in rerun.done  # the same actors serve the next run
