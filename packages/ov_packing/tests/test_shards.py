"""Packed shards: write_shards/iter_bins round trips, webdataset compatibility, limits, errors."""

import gc
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import msgspec
import numpy as np
import pytest

from ov_packing import shards
from ov_packing.errors import ShardError
from ov_packing.plan import PackParams, PackPlan
from ov_packing.shards import ShardIndex, iter_bins, write_shards
from ov_packing.source_tars import merge_tar_indexes


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _make_plan(ids: list[str], bins: list[list[int]], patches: bool = True) -> PackPlan:
    rng = np.random.default_rng(len(ids))
    offsets = np.cumsum([0] + [len(members) for members in bins]).astype(np.int64)
    return PackPlan(
        params=PackParams(capacity=4096),
        algorithm="test",
        ids=ids,
        tokens=rng.integers(1, 1000, len(ids)).astype(np.int32),
        patches=rng.integers(0, 500, len(ids)).astype(np.int32) if patches else None,
        bin_offsets=offsets,
        bin_samples=np.array([i for members in bins for i in members], dtype=np.int32),
        rejected=np.zeros(0, np.int32),
        rejected_reasons=np.zeros(0, np.uint8),
    )


@pytest.fixture
def corpus(tmp_path):
    """Three source tars; returns (tar paths, {key: (tar name, {ext: bytes})})."""
    rng = np.random.default_rng(0)
    layout = {
        "a.tar": ["images/0000", "images/0001", "images/0002"],
        "b.tar": ["deep/x/0003", "deep/x/0004"],
        "c.tar": ["0005", "0006", "0007"],
    }
    samples: dict[str, tuple[str, dict[str, bytes]]] = {}
    paths = []
    (tmp_path / "sources").mkdir()
    for tar_name, keys in layout.items():
        members = []
        for key in keys:
            files = {
                "jpg": rng.bytes(int(rng.integers(1, 3000))),
                "json": json.dumps({"caption": f"sample {key}"}).encode(),
            }
            if key.endswith("4"):
                files["seg.png"] = rng.bytes(700)
            samples[key] = (tar_name, files)
            members += [(f"{key}.{ext}", data) for ext, data in files.items()]
        paths.append(_write_tar(tmp_path / "sources" / tar_name, members))
    return paths, samples


@pytest.fixture
def plan(corpus):
    _, samples = corpus
    ids = sorted(samples, reverse=True)
    return _make_plan(ids, [[3, 0], [7], [5, 2, 4], [1, 6]])


def test_iter_bins_returns_every_sub_sample_byte_exact_in_plan_order(corpus, plan, tmp_path):
    paths, samples = corpus
    write_shards(plan, paths, tmp_path / "out", max_bins_per_shard=3)

    bins = list(iter_bins(tmp_path / "out"))

    assert [packed.index for packed in bins] == list(range(plan.num_bins))
    for packed in bins:
        members = plan.bin(packed.index).tolist()
        assert [sample.id for sample in packed.samples] == [plan.sample_id(i) for i in members]
        assert packed.tokens == int(plan.tokens[members].sum())
        assert packed.patches == int(plan.patches[members].sum())
        for sample, i in zip(packed.samples, members, strict=True):
            tar_name, files = samples[sample.id]
            assert sample.source == tar_name
            assert sample.source_key == sample.id
            assert sample.tokens == plan.tokens[i]
            assert sample.patches == plan.patches[i]
            assert sample.files == files


def test_index_json_counts_bins_samples_and_describes_each_shard(corpus, plan, tmp_path):
    paths, _ = corpus
    returned = write_shards(plan, paths, tmp_path / "out", max_bins_per_shard=3)

    raw = json.loads((tmp_path / "out" / "index.json").read_text())
    assert raw["format"] == "ov-packing-shards"
    assert raw["version"] == 2
    assert raw["num_bins"] == 4
    assert raw["num_samples"] == 8
    assert [(s["name"], s["first_bin"], s["num_bins"]) for s in raw["shards"]] == [
        ("shard-000000.tar", 0, 3),
        ("shard-000001.tar", 3, 1),
    ]
    for shard in raw["shards"]:
        data = (tmp_path / "out" / shard["name"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
    assert ShardIndex.load(tmp_path / "out") == returned
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "bins.npy",
        "index.json",
        "samples.npy",
        "shard-000000.tar",
        "shard-000001.tar",
    ]


def test_bin_json_lists_sources_and_renamed_files(corpus, tmp_path):
    paths, _ = corpus
    plan = _make_plan(["deep/x/0004", "0005"], [[1, 0]], patches=False)
    write_shards(plan, paths, tmp_path / "out")

    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        names = tar.getnames()
        record = json.loads(tar.extractfile("bin-000000000.json").read())
    assert names == [
        "bin-000000000.json",
        "bin-000000000.s0.jpg",
        "bin-000000000.s0.json",
        "bin-000000000.s1.jpg",
        "bin-000000000.s1.json",
        "bin-000000000.s1.seg.png",
    ]
    assert record["patches"] is None
    assert record["samples"][1] == {
        "files": {"jpg": "s1.jpg", "json": "s1.json", "seg.png": "s1.seg.png"},
        "id": "deep/x/0004",
        "patches": None,
        "source": "b.tar",
        "source_key": "deep/x/0004",
        "tokens": int(plan.tokens[0]),
    }


# webdataset 1.0.x never closes the shard files it opens (tariterators.tar_file_iterator).
@pytest.mark.filterwarnings(
    "ignore:unclosed file <_io.BufferedReader name=.*shard-:ResourceWarning"
)
def test_shards_are_readable_by_webdataset_one_sample_per_bin(corpus, plan, tmp_path):
    webdataset = pytest.importorskip("webdataset")
    paths, samples = corpus
    index = write_shards(plan, paths, tmp_path / "out", max_bins_per_shard=2)

    urls = [str(tmp_path / "out" / shard.name) for shard in index.shards]
    read = list(webdataset.WebDataset(urls, shardshuffle=False))
    gc.collect()  # so the leaked files are finalised while the filter above applies

    assert [sample["__key__"] for sample in read] == [f"bin-{i:09d}" for i in range(4)]
    for number, sample in enumerate(read):
        record = json.loads(sample["json"])
        assert record["bin"] == number
        for position, i in enumerate(plan.bin(number).tolist()):
            _, files = samples[plan.sample_id(i)]
            for ext, data in files.items():
                assert sample[f"s{position}.{ext}"] == data


def test_writing_the_same_plan_twice_gives_byte_identical_output(corpus, plan, tmp_path):
    paths, _ = corpus
    write_shards(plan, paths, tmp_path / "one", max_bins_per_shard=2)
    write_shards(plan, list(reversed(paths)), tmp_path / "two", max_bins_per_shard=2)

    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert one == two
    with tarfile.open(tmp_path / "one" / "shard-000000.tar") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
            assert (member.uname, member.gname, member.mode) == ("", "", 0o644)


@pytest.mark.parametrize(("max_bins", "expected"), [(1, [1, 1, 1, 1]), (3, [3, 1]), (None, [4])])
def test_bin_count_limit_sets_bins_per_shard(corpus, plan, tmp_path, max_bins, expected):
    paths, _ = corpus
    index = write_shards(plan, paths, tmp_path / "out", max_bins_per_shard=max_bins)
    assert [shard.num_bins for shard in index.shards] == expected


def test_size_limit_starts_a_new_shard_and_gives_an_oversized_bin_its_own(tmp_path):
    # A small bin is 22,016 tar bytes (json header + one block, jpg header + 20,480 bytes); with the
    # end marker and 10 KiB record padding two make a 51,200-byte shard and three a 71,680-byte one.
    sizes = {"s0": 20_000, "s1": 20_000, "big": 100_000, "s2": 20_000, "s3": 20_000}
    source = _write_tar(
        tmp_path / "src.tar", [(f"{key}.jpg", bytes(size)) for key, size in sizes.items()]
    )
    plan = _make_plan(list(sizes), [[0], [1], [2], [3], [4]])
    limit = 60_000

    index = write_shards(
        plan, [source], tmp_path / "out", max_bins_per_shard=None, max_shard_bytes=limit
    )

    assert [shard.num_bins for shard in index.shards] == [2, 1, 2]
    assert [shard.bytes <= limit for shard in index.shards] == [True, False, True]
    assert [packed.samples[0].id for packed in iter_bins(tmp_path / "out")] == list(sizes)


def test_progress_counts_shards_on_stderr(corpus, plan, tmp_path, capsys):
    paths, _ = corpus
    write_shards(plan, paths, tmp_path / "out", progress=True, max_bins_per_shard=2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "writing shards: 100% 2/2" in captured.err


def test_sources_may_be_a_directory_or_a_glob(corpus, plan, tmp_path):
    paths, _ = corpus
    write_shards(plan, [paths[0].parent], tmp_path / "from-dir")
    write_shards(plan, [str(paths[0].parent / "*.tar")], tmp_path / "from-glob")
    assert (tmp_path / "from-dir" / "index.json").read_bytes() == (
        tmp_path / "from-glob" / "index.json"
    ).read_bytes()


def test_empty_plan_writes_an_index_with_no_shards(corpus, tmp_path):
    paths, _ = corpus
    index = write_shards(_make_plan(["0005"], []), paths, tmp_path / "out")
    assert (index.num_bins, index.num_samples, index.shards) == (0, 0, [])
    assert list(iter_bins(tmp_path / "out")) == []


# --- source errors ------------------------------------------------------------------------------


def _write_one(tmp_path, members, plan_ids=("x",)):
    source = _write_tar(tmp_path / "bad.tar", members)
    plan = _make_plan(list(plan_ids), [[0]])
    write_shards(plan, [source], tmp_path / "out")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x.jpg", "'..' segment"),
        ("images/../../x.jpg", "'..' segment"),
        ("/etc/x.jpg", "absolute path"),
        ("images\\x.jpg", "backslash"),
    ],
)
def test_source_member_that_could_escape_a_directory_is_refused(tmp_path, name, reason):
    with pytest.raises(ShardError, match=rf"bad\.tar: member {re.escape(repr(name))} .*{reason}"):
        _write_one(tmp_path, [("x.jpg", b"ok"), (name, b"evil")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "description"),
    [
        (tarfile.SYMTYPE, "symbolic link"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.CHRTYPE, "device"),
    ],
)
def test_source_link_or_device_member_is_refused(tmp_path, kind, description):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("x.json"), io.BytesIO())
        link = tarfile.TarInfo("x.jpg")
        link.type = kind
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ShardError, match=rf"bad\.tar: member 'x\.jpg' is a {description}"):
        write_shards(_make_plan(["x"], [[0]]), [path], tmp_path / "out")


def test_source_directories_are_skipped(tmp_path):
    path = tmp_path / "src.tar"
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        info = tarfile.TarInfo("images/x.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"jpg"))
    write_shards(_make_plan(["images/x"], [[0]]), [path], tmp_path / "out")
    [packed] = iter_bins(tmp_path / "out")
    assert packed.samples[0].files == {"jpg": b"jpg"}


def test_key_in_two_source_tars_names_both(tmp_path):
    first = _write_tar(tmp_path / "first.tar", [("k.jpg", b"1")])
    second = _write_tar(tmp_path / "second.tar", [("k.json", b"2")])
    with pytest.raises(ShardError, match=r"'k' is in two source tars: .*first\.tar.*second\.tar"):
        write_shards(_make_plan(["k"], [[0]]), [first, second], tmp_path / "out")


def test_key_twice_in_one_tar_is_refused(tmp_path):
    members = [("k.jpg", b"1"), ("other.jpg", b"2"), ("k.json", b"3")]
    with pytest.raises(ShardError, match=r"bad\.tar: key 'k' appears twice .*'k\.jpg'.*'k\.json'"):
        _write_one(tmp_path, members, plan_ids=["k"])


def test_extension_repeated_within_a_sample_is_refused(tmp_path):
    with pytest.raises(ShardError, match=r"sample 'x' has extension 'JPG' twice"):
        _write_one(tmp_path, [("x.jpg", b"1"), ("x.JPG", b"2")])


@pytest.mark.parametrize("name", ["x.j pg", "x.jp$g", "x.", "x.jpg\u00e9"])
def test_extension_outside_the_safe_characters_is_refused(tmp_path, name):
    with pytest.raises(ShardError, match=r"extensions may only use"):
        _write_one(tmp_path, [(name, b"1")])


def test_plan_ids_missing_from_sources_are_counted_and_named(corpus, tmp_path):
    paths, _ = corpus
    plan = _make_plan(["0005", "gone-1", "gone-2"], [[0, 1], [2]])
    with pytest.raises(
        ShardError, match=r"2 packed sample id\(s\) .* first: \['gone-1', 'gone-2'\]"
    ):
        write_shards(plan, paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_source_file_is_refused(corpus, plan, tmp_path):
    paths, _ = corpus
    with pytest.raises(ShardError, match=r"source tar not found: .*nope\.tar"):
        write_shards(plan, [*paths, tmp_path / "nope.tar"], tmp_path / "out")


@pytest.mark.parametrize("sources", [[], ["{empty}"], ["{empty}/*.tar"]])
def test_no_matching_sources_is_refused(plan, tmp_path, sources):
    (tmp_path / "empty").mkdir()
    sources = [source.format(empty=tmp_path / "empty") for source in sources]
    with pytest.raises(ShardError, match="no source tars matched"):
        write_shards(plan, sources, tmp_path / "out")


def test_compressed_source_tar_is_refused(tmp_path):
    path = tmp_path / "src.tar"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("x.jpg"), io.BytesIO())
    with pytest.raises(ShardError, match=r"src\.tar: not an uncompressed tar file"):
        write_shards(_make_plan(["x"], [[0]]), [path], tmp_path / "out")


@pytest.mark.parametrize("existing", ["index.json", "shard-000000.tar", "notes.txt"])
def test_non_empty_out_dir_is_refused(corpus, plan, tmp_path, existing):
    paths, _ = corpus
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / existing).write_bytes(b"")
    with pytest.raises(ShardError, match=rf"out: output directory is .*{existing}"):
        write_shards(plan, paths, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [existing]


def test_truncated_source_tar_is_refused(tmp_path):
    source = _write_tar(tmp_path / "src.tar", [("a.jpg", bytes(600)), ("b.jpg", bytes(5000))])
    with open(source, "r+b") as file:
        file.truncate(512 + 1024 + 512 + 1000)  # b.jpg's header survives, its data does not
    with pytest.raises(
        ShardError, match=r"src\.tar: truncated: member 'b\.jpg' needs 5000 bytes at offset 2048"
    ):
        write_shards(_make_plan(["a", "b"], [[0], [1]]), [source], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_source_tar_cut_at_a_header_boundary_is_refused(tmp_path):
    source = _write_tar(tmp_path / "src.tar", [("a.jpg", bytes(600)), ("b.jpg", bytes(5000))])
    with open(source, "r+b") as file:
        file.truncate(512 + 1024)  # a.jpg complete, then nothing: no end-of-archive blocks
    with pytest.raises(ShardError, match=r"src\.tar: truncated: no end-of-archive block at byte"):
        write_shards(_make_plan(["a"], [[0]]), [source], tmp_path / "out")


def test_source_truncated_after_indexing_fails_and_leaves_nothing_behind(tmp_path, monkeypatch):
    source = _write_tar(tmp_path / "src.tar", [("a.jpg", bytes(600)), ("b.jpg", bytes(5000))])

    def scan_then_truncate(paths, parts):
        index = merge_tar_indexes(paths, parts)
        with open(source, "r+b") as file:
            file.truncate(512 + 1024 + 512 + 1000)
        return index

    monkeypatch.setattr(shards, "merge_tar_indexes", scan_then_truncate)
    plan = _make_plan(["a", "b"], [[0], [1]])
    with pytest.raises(ShardError, match=r"src\.tar: truncated: 5000 bytes expected"):
        write_shards(plan, [source], tmp_path / "out", max_bins_per_shard=1)
    assert not (tmp_path / "out").exists()


# --- reader errors ------------------------------------------------------------------------------


@pytest.fixture
def written(corpus, plan, tmp_path):
    paths, _ = corpus
    write_shards(plan, paths, tmp_path / "out", max_bins_per_shard=2)
    return tmp_path / "out"


def _rewrite_first_shard(out_dir: Path, edit) -> None:
    """Replace shard-000000.tar by `edit(members)` and fix its size and hash in index.json,
    as a forger would; the bin table (whose per-bin hashes would refuse it first) is dropped, so
    the checks of the member-by-member reader are what is tested."""
    path = out_dir / "shard-000000.tar"
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    _write_tar(path, edit(members))
    index = ShardIndex.load(out_dir)
    data = path.read_bytes()
    first = msgspec.structs.replace(
        index.shards[0], bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    fixed = msgspec.to_builtins(msgspec.structs.replace(index, shards=[first, *index.shards[1:]]))
    fixed["version"] = 1
    del fixed["table"]
    (out_dir / "index.json").write_bytes(msgspec.json.encode(fixed))


def test_reader_refuses_a_missing_shard(written):
    (written / "shard-000001.tar").unlink()
    with pytest.raises(
        ShardError, match=r"shard-000001\.tar: shard listed in index\.json is missing"
    ):
        next(iter_bins(written))


def test_reader_refuses_a_shard_whose_size_changed(written):
    with open(written / "shard-000000.tar", "ab") as file:
        file.write(b"\0" * 512)
    with pytest.raises(
        ShardError, match=r"shard-000000\.tar: shard is \d+ bytes, index\.json says"
    ):
        next(iter_bins(written))


def test_reader_refuses_a_file_listed_in_the_bin_json_but_absent(written):
    _rewrite_first_shard(
        written, lambda members: [m for m in members if m[0] != "bin-000000000.s1.jpg"]
    )
    with pytest.raises(
        ShardError, match=r"member 'bin-000000000\.s1\.jpg' listed in .* is missing"
    ):
        list(iter_bins(written))


def test_reader_refuses_a_member_not_listed_in_the_bin_json(written):
    _rewrite_first_shard(
        written, lambda members: [*members[:2], ("bin-000000000.extra", b""), *members[2:]]
    )
    with pytest.raises(ShardError, match=r"member 'bin-000000000\.extra' is not listed"):
        list(iter_bins(written))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../bin-000000000.x", "'..' segment"),
        ("/bin-000000000.x", "absolute path"),
        ("dir/bin-000000000.x", "contains a directory"),
    ],
)
def test_reader_refuses_member_names_that_could_escape(written, name, message):
    _rewrite_first_shard(written, lambda members: [(name, b""), *members])
    with pytest.raises(ShardError, match=rf"shard-000000\.tar: member .*{message}"):
        list(iter_bins(written))


def test_reader_refuses_a_member_of_an_unexpected_bin(written):
    def rename(members):
        return [(name.replace("bin-000000001", "bin-000000007"), data) for name, data in members]

    _rewrite_first_shard(written, rename)
    with pytest.raises(
        ShardError,
        match=r"member 'bin-000000007\.json' does not belong to the expected bin-000000001",
    ):
        list(iter_bins(written))


def test_reader_refuses_an_unknown_index_version(written):
    raw = json.loads((written / "index.json").read_text())
    raw["version"] = 3
    (written / "index.json").write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="index version 3 is not supported"):
        list(iter_bins(written))


def test_reader_refuses_a_directory_without_index(tmp_path):
    with pytest.raises(ShardError, match=r"index\.json: not found"):
        list(iter_bins(tmp_path))


def test_reader_refuses_more_bins_than_the_index_lists(written):
    def add_bin(members):
        return [*members, ("bin-000000002.json", b"{}")]

    _rewrite_first_shard(written, add_bin)
    with pytest.raises(
        ShardError, match=r"member 'bin-000000002\.json' follows the shard's last bin"
    ):
        list(iter_bins(written))


# --- work units: workers, resume after a kill, exact sizes ---------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Two source tars of 40 samples and a plan of 30 bins; (paths, plan)."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(5)
    keys = [f"k{number:03d}" for number in range(40)]
    paths = [
        _write_tar(
            root / f"part-{half}.tar",
            [
                (f"{key}.{ext}", rng.bytes(int(rng.integers(1, 2000))))
                for key in keys[half * 20 : half * 20 + 20]
                for ext in ("jpg", "json")
            ],
        )
        for half in range(2)
    ]
    order = rng.permutation(40)[:36].tolist()
    bins = [order[i : i + 1 + i % 2] for i in range(0, 36, 1 + 0)][:30]
    return paths, _make_plan(keys, bins)


def test_one_and_two_workers_write_the_same_bytes(many, tmp_path):
    from ov_packing.work_units import LocalEngine

    paths, plan = many
    reports = []
    one = write_shards(plan, paths, tmp_path / "one", max_shard_bytes=40_000)
    with LocalEngine(2) as engine:
        two = write_shards(
            plan, paths, tmp_path / "two", max_shard_bytes=40_000, engine=engine, reports=reports
        )
    assert one == two
    assert len(one.shards) > 3
    assert all(shard.bytes <= 40_000 for shard in one.shards)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert [report.engine for report in reports] == ["local engine, 2 workers"] * 2
    assert len(reports[1].done) == len(one.shards)
    assert sorted(p.name for p in (tmp_path / "two").iterdir())[:2] == ["bins.npy", "index.json"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "two").iterdir())


def test_a_write_killed_mid_job_resumes_to_the_same_bytes(many, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    paths, plan = many
    write_shards(plan, paths, tmp_path / "reference", max_bins_per_shard=1)
    plan.save(tmp_path / "plan.bin")
    out = tmp_path / "out"
    code = f"""
import time
from ov_packing import shards
from ov_packing.plan import PackPlan
run = shards._ShardTask.run
def slow(self, unit, staging):
    time.sleep(0.05)
    run(self, unit, staging)
shards._ShardTask.run = slow
shards.write_shards(PackPlan.load({str(tmp_path / "plan.bin")!r}),
                    {[str(p) for p in paths]!r}, {str(out)!r}, max_bins_per_shard=1)
"""
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / ".units").glob("shard-*.json"))) < 8:
            assert process.poll() is None, "the write ended before it could be killed"
            assert time.monotonic() < deadline, "no 8 shards written in 60 s"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = len(list((out / ".units").glob("shard-*.json")))
    assert 8 <= finished < plan.num_bins
    assert not (out / "index.json").exists()
    with pytest.raises(ShardError, match="output directory is a finished packed directory"):
        write_shards(plan, paths, tmp_path / "reference")  # a finished directory is not resumed
    reports = []
    write_shards(plan, paths, out, max_bins_per_shard=1, reports=reports)
    assert len(reports[1].skipped) == finished
    assert len(reports[1].done) == plan.num_bins - finished
    assert reports[1].redone == ()
    assert _tree(out) == _tree(tmp_path / "reference")


def test_a_resumed_write_redoes_a_shard_changed_since(many, tmp_path):
    paths, plan = many
    out = tmp_path / "out"
    write_shards(plan, paths, tmp_path / "reference", max_bins_per_shard=4)
    (out / ".units").mkdir(parents=True)  # as a kill leaves it, before any unit finished
    (out / ".units" / "job.json").write_bytes(b"")
    with pytest.raises(Exception, match=r"job\.json is not a work-units job record"):
        write_shards(plan, paths, out, max_bins_per_shard=4)
    (out / ".units" / "job.json").unlink()
    write_shards(plan, paths, out, max_bins_per_shard=4)
    assert _tree(out) == _tree(tmp_path / "reference")


def test_bin_sizes_are_exact_for_awkward_ids_extensions_and_no_patches(tmp_path):
    ids = ['quote"d', "tab\tnew\nline", "bell\x07", "ünïcødé/ключ", "x" * 150]
    long_ext = "e" * 120  # member names past 100 characters take a PAX header
    members = [(f"{key}.jpg", bytes(range(7)) * (n + 1)) for n, key in enumerate(ids)]
    members.append((f"{ids[0]}x.{long_ext}", b"long"))
    source = _write_tar(tmp_path / "src.tar", members)
    plan = _make_plan([*ids, f"{ids[0]}x"], [[5, 0], [1, 2], [3, 4]], patches=False)
    write_shards(plan, [source], tmp_path / "out")  # the writer checks each entry's size
    bins = list(iter_bins(tmp_path / "out"))
    assert [sample.id for packed in bins for sample in packed.samples] == [
        plan.sample_id(i) for i in [5, 0, 1, 2, 3, 4]
    ]
    assert bins[0].samples[0].files == {long_ext: b"long"}


# --- SHA-256 while reading ----------------------------------------------------------------------


def test_a_flipped_byte_in_a_bin_is_an_error_naming_the_shard_and_bin(written):
    from ov_packing.shard_table import load_table
    from ov_packing.shards import read_bin

    index = ShardIndex.load(written)
    table = load_table(written)
    path = written / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    at = int(table.offset[3]) + 1024 + 5  # inside bin 3's data (the second of shard 1)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    message = r"shard-000001\.tar: bin 3 \(bytes \d+\.\.\d+\) does not have the SHA-256"
    read = iter_bins(written)
    assert [next(read).index for _ in range(3)] == [0, 1, 2]  # bins before it are fine
    with pytest.raises(ShardError, match=message):
        next(read)
    with pytest.raises(ShardError, match=message):
        read_bin(written, table, index, 3)
    assert read_bin(written, table, index, 2).index == 2


def test_a_flipped_byte_outside_the_bins_fails_the_shard_hash(written):
    path = written / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # in the end-of-archive padding, which no bin covers
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000000\.tar: SHA-256 .* differs from index"):
        list(iter_bins(written))


def test_without_a_table_a_flipped_byte_fails_the_shard_hash_before_any_bin(written):
    _rewrite_first_shard(written, lambda members: members)  # now read member by member
    path = written / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard-000000\.tar: SHA-256 .* differs from index"):
        next(iter_bins(written))


def test_the_source_index_is_columnar(corpus):
    import pyarrow as pa

    from ov_packing.source_tars import scan_sources

    paths, samples = corpus
    index = scan_sources(paths)
    assert isinstance(index.keys, pa.LargeStringArray)
    assert index.keys.to_pylist() == list(samples)
    assert [type(value) for value in (index.source, index.first_member, index.member_offset)] == [
        np.ndarray
    ] * 3
    assert index.source.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    row = int(index.rows_of(pa.array(["deep/x/0004"], pa.large_string()))[0])
    assert [member.ext for member in index.members(row)] == ["jpg", "json", "seg.png"]
    assert index.rows_of(pa.array(["nope"], pa.large_string())).tolist() == [-1]


# --- ov-pack write ------------------------------------------------------------------------------


def test_cli_write_resumes_a_failed_write_and_overwrite_starts_over(many, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ov_packing.cli import main

    paths, plan = many
    plan.save(tmp_path / "plan.ovp")
    write_shards(plan, paths, tmp_path / "reference", max_bins_per_shard=4)
    args = ["write", "--plan", str(tmp_path / "plan.ovp"), "--max-bins-per-shard", "4", "-q"]
    args += [arg for path in paths for arg in ("--source", str(path))]
    out = tmp_path / "out"

    run = shards._ShardTask.run

    def fail_on_shard_3(self, unit, staging):
        if unit.key == "shard-000003":
            raise OSError("disk full")
        run(self, unit, staging)

    monkeypatch.setattr(shards._ShardTask, "run", fail_on_shard_3)
    result = CliRunner().invoke(main, [*args, "-o", str(out), "--workers", "1"])
    assert result.exit_code == 1
    assert "work unit 'shard-000003' failed: OSError: disk full" in result.output
    assert (out / "shard-000002.tar").exists()
    assert not (out / "index.json").exists()
    monkeypatch.setattr(shards._ShardTask, "run", run)

    result = CliRunner().invoke(main, [*args, "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"resuming the unfinished write in {out}" in result.output
    assert "shards: 8 units: 5 run, 3 already done (verified)" in result.output
    assert _tree(out) == _tree(tmp_path / "reference")

    result = CliRunner().invoke(main, [*args, "-o", str(out), "--workers", "1"])
    assert result.exit_code == 2  # a finished folder is not resumed
    assert "--overwrite" in result.output
    result = CliRunner().invoke(main, [*args, "-o", str(out), "--workers", "2", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "resuming" not in result.output
    assert "8 units: 8 run, 0 already done" in result.output
    assert _tree(out) == _tree(tmp_path / "reference")


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10**6, 8**11 - 1, 8**11])
@pytest.mark.parametrize(
    "name",
    ["bin-000000007.json", "bin-000000001.s12.seg.png", "x" * 100, "x" * 101, "é.jpg", "a/b.c"],
)
def test_fast_member_headers_equal_tarfiles(name, size):
    assert shards._tar_header(name, size) == shards._tarfile_header(name, size)
