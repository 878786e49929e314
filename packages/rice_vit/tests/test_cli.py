"""The `rice-vit` entry point: help and version."""

import json
import pathlib
import tomllib

from click.testing import CliRunner

from rice_vit import __version__
from rice_vit.cli import main

PYPROJECT = pathlib.Path(__file__).parents[1] / "pyproject.toml"


def test_version_flag_prints_the_version_declared_in_pyproject():
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"rice-vit, version {declared}"
    assert __version__ == declared


def test_help_describes_the_package():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: rice-vit" in result.output


FIXTURES = pathlib.Path(__file__).parents[3] / "fixtures"
LLAVA_OV = FIXTURES / "llava_ov_tiny" / "hf"
MLCD = FIXTURES / "rice_vit_mlcd_tiny" / "hf"
IMAGES = sorted((FIXTURES / "llava_ov_tiny").glob("image_*.png"))


def run(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_info_reports_layout_parameters_and_config_of_both_fixtures():
    text = run("info", LLAVA_OV)
    assert "layout       llava-ov (tensor names under 'visual.')" in text
    assert "parameters   104,776 in 29 tensors" in text
    assert "31 tensors outside the encoder" in text
    report = json.loads(run("info", MLCD, "--json"))
    assert report["layout"] == "mlcd"
    assert report["parameters"] == 104_904
    assert report["config"]["has_post_layernorm"] is True
    assert report["config"]["depth"] == 2


def test_embed_batches_by_patches_and_equals_encoding_each_image_alone(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from rice_vit import ImageProcessor, RiceViT

    out = tmp_path / "features.safetensors"
    run("embed", "--model", LLAVA_OV, *IMAGES, "--out", out, "--max-batch-patches", 900)
    stored = load_file(out)
    model, processor = RiceViT.from_pretrained(LLAVA_OV), ImageProcessor()
    with torch.no_grad():
        expected = [model(*processor([path])) for path in IMAGES]
    torch.testing.assert_close(stored["patch_features"], torch.cat(expected), atol=1e-5, rtol=0)
    assert stored["grid_thw"].tolist() == [[1, 6, 4], [1, 24, 36], [1, 6, 86]]
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["images"]) == [str(p) for p in IMAGES]
    assert metadata["pool"] == "none"
    from rice_vit.safetensors_folder import process_umask

    assert out.stat().st_mode & 0o777 == 0o666 & ~process_umask()  # not safetensors' 0600


def test_embed_mean_and_cls_pooling_write_one_vector_per_image(tmp_path):
    import torch
    from safetensors.torch import load_file

    from rice_vit import ImageProcessor, RiceViT

    run("embed", "--model", MLCD, *IMAGES, "--out", tmp_path / "m.safetensors", "--pool", "mean")
    run("embed", "--model", MLCD, *IMAGES, "--out", tmp_path / "c.safetensors", "--pool", "cls")
    model, processor = RiceViT.from_pretrained(MLCD), ImageProcessor()
    with torch.no_grad():
        output = model.encode(*processor(IMAGES))
        means, pooled = model.pool(output, "mean"), model.pool(output, "cls")
    mean_file, cls_file = (
        load_file(tmp_path / "m.safetensors"),
        load_file(tmp_path / "c.safetensors"),
    )
    torch.testing.assert_close(mean_file["embeddings"], means, atol=1e-5, rtol=0)
    torch.testing.assert_close(cls_file["embeddings"], pooled, atol=1e-5, rtol=0)
    assert mean_file["embeddings"].shape == (3, 64)


def test_embed_skips_a_corrupt_image_naming_it_and_embeds_the_rest(tmp_path):
    from safetensors import safe_open

    broken, out = tmp_path / "broken.png", tmp_path / "o.safetensors"
    broken.write_bytes(IMAGES[0].read_bytes()[:60])
    args = ["embed", "--model", str(LLAVA_OV), "--pool", "mean", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, str(IMAGES[0]), str(broken), str(IMAGES[1])])
    assert result.exit_code == 0, result.output
    assert f"skipped: {broken}: " in result.output
    assert "for 2 images (1 skipped: see above)" in result.output
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
        assert handle.get_tensor("embeddings").shape[0] == 2
    assert json.loads(metadata["images"]) == [str(IMAGES[0]), str(IMAGES[1])]
    assert json.loads(metadata["skipped"]) == [str(broken)]
    only_broken = CliRunner().invoke(main, [*args, "--overwrite", str(broken)])
    assert only_broken.exit_code == 2
    assert only_broken.output.strip().splitlines()[-1] == (
        "Error: none of the 1 images could be embedded"
    )


def test_convert_between_layouts_and_refuse_to_overwrite_without_the_flag(tmp_path):
    from safetensors.torch import load_file

    result = CliRunner().invoke(
        main, ["convert", str(MLCD), "--out", str(tmp_path / "ov"), "--layout", "llava-ov"]
    )
    assert result.exit_code == 0, result.output
    assert "no place for post_layernorm.weight, post_layernorm.bias" in result.output
    assert "104,776 parameters" in result.output
    assert "llava-ov" in run("info", tmp_path / "ov")
    run(
        "convert",
        tmp_path / "ov",
        "-o",
        tmp_path / "back",
        "--layout",
        "mlcd",
        "--max-shard-size",
        "100KB",
    )
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
    original = load_file(MLCD / "model.safetensors")
    back = {}
    for shard in (tmp_path / "back").glob("model-*.safetensors"):
        back |= load_file(shard)
    assert sorted(back) == sorted(n for n in original if "post_layernorm" not in n)
    refused = CliRunner().invoke(
        main, ["convert", str(MLCD), "-o", str(tmp_path / "ov"), "--layout", "mlcd"]
    )
    assert refused.exit_code == 2
    assert "--overwrite" in refused.output
    run(
        "convert",
        MLCD,
        "-o",
        tmp_path / "ov",
        "--layout",
        "mlcd",
        "--overwrite",
        "--store-dtype",
        "bfloat16",
    )
    assert "bfloat16" in run("info", tmp_path / "ov")
