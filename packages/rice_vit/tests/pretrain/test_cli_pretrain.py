"""`rice-vit pretrain` step by step through the CLI: features -> kmeans -> labels -> train ->
export, on a tiny synthetic set, plus the help texts and the errors a user meets first."""

import json

from click.testing import CliRunner

from rice_vit import RiceViT
from rice_vit.cli import main
from rice_vit.pretrain.synthetic import SyntheticSpec, write_synthetic_dataset


def invoke(*arguments, code=0):
    result = CliRunner().invoke(main, [str(a) for a in arguments])
    assert result.exit_code == code, result.output
    return result.output


def test_each_step_writes_what_the_next_reads(tmp_path):
    spec = SyntheticSpec(images=8, sizes=(56, 84), object_size=(16, 24), font_size=14, seed=4)
    data = write_synthetic_dataset(tmp_path / "data", spec)
    with (tmp_path / "data" / "manifest.jsonl").open("a") as manifest:  # one bad box, reported
        manifest.write(
            '{"image": "images/000000.png", "regions": [{"box": [5, 5, 5, 9], "kind": "object"}]}\n'
        )
    output = invoke("pretrain", "features", data.manifest, "-o", tmp_path / "feats", "-q")
    assert "empty" in output
    report = json.loads((tmp_path / "feats" / "report.json").read_text())
    assert report["excluded"]["empty"] == 1
    invoke("pretrain", "kmeans", tmp_path / "feats", "-k", 4, "-o", tmp_path / "km", "-q")
    invoke(
        "pretrain",
        "labels",
        data.manifest,
        "--features",
        tmp_path / "feats",
        "--centroids",
        tmp_path / "km",
        "-o",
        tmp_path / "labelled",
    )
    labels = json.loads((tmp_path / "labelled" / "labels.json").read_text())
    assert (labels["num_clusters"], labels["ocr_classes"], labels["num_classes"]) == (4, 256, 260)
    config = tmp_path / "run.toml"
    config.write_text(
        "[model]\nhidden_size = 32\nintermediate_size = 64\nregion_layers = 1\n"
        '[data]\nmanifest = "labelled/manifest.jsonl"\nbatch_images = 4\nregions_per_image = 2\n'
        '[train]\nsteps = 2\ncheckpoint_every = 1\ndevice = "cpu"\n'
    )
    invoke("pretrain", "train", "--config", config, "-o", tmp_path / "run", "-q")
    log = (tmp_path / "run" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]
    # a rerun resumes the finished run (nothing to train), --set changes are refused
    invoke("pretrain", "train", "--config", config, "-o", tmp_path / "run", "-q")
    refused = invoke(
        "pretrain",
        "train",
        "--config",
        config,
        "--set",
        "optim.lr=0.01",
        "-o",
        tmp_path / "run",
        "-q",
        code=2,
    )
    assert "optim.lr" in refused
    invoke("pretrain", "export", tmp_path / "run", "--layout", "mlcd", "-o", tmp_path / "mlcd")
    assert RiceViT.from_pretrained(tmp_path / "mlcd").config.region_layers == 1


def test_help_names_every_step_and_flag_defaults():
    output = invoke("pretrain", "--help")
    for step in ("features", "kmeans", "labels", "train", "export", "synthetic"):
        assert step in output
    assert "default: 1200" in invoke("pretrain", "synthetic", "--help")
    assert "default: 20" in invoke("pretrain", "kmeans", "--help")


def test_an_unknown_config_key_is_one_error_line(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("[optim]\nlearning_rate = 1e-3\n")
    output = invoke("pretrain", "train", "--config", config, "-o", tmp_path / "run", code=2)
    assert "unknown key 'optim.learning_rate'" in output
