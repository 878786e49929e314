"""The root README's "Train on your data" block, run as written on tiny local pieces.

The test builds what a user brings: a tiny Qwen3 LLM folder (HF layout, a Qwen-style
tokenizer.json, random weights), a tiny RICE-ViT folder in the MLCD layout, three LLaVA-format
datasets with Pillow images and a jsonl evaluation set. It then takes the bash block of the
README section, sets the block's variables to those folders, and runs every command line in
order through the real CLIs (in this process, with click's runner: no network, no subprocess).
Only two kinds of change are made to the lines: the variables' values, and options that make
the runs tiny (`TINY_OPTIONS`: 2 steps of one micro-batch, no loader workers, no progress bars,
a few new tokens). A command the README spells wrong, a flag that no longer exists or a step
that no longer connects to the next fails here, so the page cannot drift from the code.

Checked beyond "it runs": Stage-0 holds the LLM's and the encoder's tensors bitwise and the
qwen2-vl chat template (not the LLM folder's text-only one); each
prepare packed every sample and reports epochs per run for its recipe; Stage-1 changed the
projector and nothing else, Stage-1.5 and 2 changed the LLM too, each starting from the previous
export; the final export is bf16; the evaluation scored every question.
"""

import json
import re
import shlex
import shutil
import string
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from ov_eval.cli import main as ov_eval
from ov_model.chat_template import ChatTemplate
from ov_model.cli import main as ov_model
from ov_model.model import LlavaOV
from ov_model.tokenizer import TextTokenizer, build_tokenizer
from ov_train.cli import main as ov_train
from ov_train.data.report import load_report
from ov_train.metrics_log import read_metrics
from rice_vit import RiceViT, RiceViTConfig

README = Path(__file__).parents[1] / "README.md"
SECTION = "## Train on your data"
CLIS = {"ov-model": ov_model, "ov-train": ov_train, "ov-eval": ov_eval}
TINY_OPTIONS = {
    ("ov-train", "prepare"): ["--quiet"],
    ("ov-train", "run"): [
        *("--set", "train.steps=2", "--set", "train.grad_accumulation=1"),
        *("--set", "data.num_workers=0", "--set", "logging.plot=false", "--quiet"),
    ],
    ("ov-eval", "run"): ["--max-new-tokens", "3", "--batch-size", "4", "--quiet"],
    ("ov-model", "chat"): ["--max-new-tokens", "3"],
}
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}
SHAPES = ("square", "circle")


def readme_block() -> tuple[dict[str, str], list[list[str]]]:
    """The variables (NAME=value lines) and the command lines of the section's bash block."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    variables, commands = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) == 1 and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
        else:
            commands.append(words)
    return variables, commands


# Qwen3's own chat template keeps a message's content only when it is a string, as real Qwen3
# and Qwen2.5 folders' tokenizer_config.json do: Stage-0 must not train with it.
QWEN3_TEXT_TEMPLATE = (
    "{%- for message in messages %}{%- if message.content is string %}"
    "{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_tiny_qwen3(folder: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    """A Qwen3 HF folder: config.json, model.safetensors (random, seeded), tokenizer.json and a
    tokenizer_config.json with a text-only chat template."""
    folder.mkdir(parents=True)
    tokenizer = TextTokenizer(build_tokenizer(texts, 320))
    tokenizer.save(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": QWEN3_TEXT_TEMPLATE, "model_max_length": 4096})
    )
    vocab = -(-tokenizer.vocab_size // 64) * 64
    hidden, inter, heads, kv, head_dim, layers = 64, 128, 4, 2, 16, 2
    generator = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        shapes |= {
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
            prefix + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            prefix + "self_attn.k_proj.weight": (kv * head_dim, hidden),
            prefix + "self_attn.v_proj.weight": (kv * head_dim, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            prefix + "self_attn.q_norm.weight": (head_dim,),
            prefix + "self_attn.k_norm.weight": (head_dim,),
            prefix + "mlp.gate_proj.weight": (inter, hidden),
            prefix + "mlp.up_proj.weight": (inter, hidden),
            prefix + "mlp.down_proj.weight": (hidden, inter),
        }
    shapes["lm_head.weight"] = (vocab, hidden)
    tensors = {
        name: torch.randn(shape, generator=generator) * 0.05 for name, shape in shapes.items()
    }
    save_file(tensors, folder / "model.safetensors")
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


def write_tiny_rice_vit(folder: Path) -> dict[str, torch.Tensor]:
    """A RICE-ViT in the MLCD layout (MLCDVisionModel names, with a post-layernorm)."""
    torch.manual_seed(1)
    config = RiceViTConfig(
        hidden_size=32, depth=2, num_heads=2, intermediate_size=64, has_post_layernorm=True
    )
    encoder = RiceViT(config)
    encoder.save_pretrained(folder, "mlcd")
    return encoder.state_dict()


def write_llava_dataset(folder: Path, count: int, *, question: bool) -> Path:
    """`count` LLaVA-format samples about drawn shapes, images under `folder/images`."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for index in range(count):
        colour = list(COLOURS)[index % len(COLOURS)]
        shape = SHAPES[index % len(SHAPES)]
        image = Image.new("RGB", (56 + 14 * (index % 3), 56), "white")
        box = (8, 8, 48, 48)
        pixels = Image.new("RGB", image.size, COLOURS[colour])
        mask = Image.new("L", image.size, 0)
        mask.paste(255, box)
        image.paste(pixels, mask=mask)
        image.save(folder / "images" / f"{index}.png")
        prompt = "What colour is the shape?" if question else "Describe the image."
        answer = colour if question else f"A {colour} {shape} on white."
        rows.append(
            {
                "id": f"{folder.name}-{index}",
                "image": f"{index}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{prompt}"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    (folder / "data.json").write_text(json.dumps(rows, indent=1))
    return folder / "data.json"


def write_eval_set(folder: Path, count: int) -> None:
    """ov-eval's jsonl task: samples.jsonl with one image per question."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for index, (colour, rgb) in enumerate(list(COLOURS.items())[:count]):
        Image.new("RGB", (56, 56), rgb).save(folder / "images" / f"{index}.png")
        lines.append(
            json.dumps(
                {
                    "id": index,
                    "question": "What colour is the image?",
                    "answers": [colour],
                    "metric": "exact_match",
                    "image": f"images/{index}.png",
                }
            )
        )
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def pieces(tmp_path_factory) -> dict[str, str]:
    """The block's variables set to tiny local folders built here."""
    root = tmp_path_factory.mktemp("your_data")
    texts = [
        f"<image>\n{prompt} A {colour} {shape} on white. {colour} What colour is the image?"
        for prompt in ("Describe the image.", "What colour is the shape?")
        for colour in COLOURS
        for shape in SHAPES
    ]
    write_tiny_qwen3(root / "Qwen3-tiny", texts * 4)
    write_tiny_rice_vit(root / "rice-vit-tiny")
    align = write_llava_dataset(root / "align", 6, question=False)
    mid = write_llava_dataset(root / "mid", 6, question=False)
    sft = write_llava_dataset(root / "sft", 8, question=True)
    write_eval_set(root / "eval", 3)
    return {
        "VIT": str(root / "rice-vit-tiny"),
        "LLM": str(root / "Qwen3-tiny"),
        "SIZE": "4b",
        "ALIGN": str(align),
        "ALIGN_IMAGES": str(align.parent / "images"),
        "MID": str(mid),
        "MID_IMAGES": str(mid.parent / "images"),
        "SFT": str(sft),
        "SFT_IMAGES": str(sft.parent / "images"),
        "EVAL": str(root / "eval"),
        "PHOTO": str(root / "eval" / "images" / "0.png"),
        "W": str(root / "work"),
    }


def test_the_readme_block_names_only_the_variables_it_sets():
    variables, commands = readme_block()
    assert set(variables) == {
        "VIT", "LLM", "SIZE", "ALIGN", "ALIGN_IMAGES", "MID", "MID_IMAGES", "SFT",
        "SFT_IMAGES", "EVAL", "PHOTO", "W",
    }  # fmt: skip
    used = {name for words in commands for word in words for name in re.findall(r"\$(\w+)", word)}
    assert used == set(variables)
    kinds = [tuple(words[:2]) for words in commands]
    assert kinds == [
        ("ov-model", "init"),
        *[("ov-train", "prepare")] * 3,
        *[("ov-train", "run"), ("ov-train", "export")] * 3,
        ("ov-eval", "run"),
        ("ov-model", "chat"),
    ]


def run_lines(commands: list[list[str]], variables: dict[str, str]) -> list[str]:
    """Run README command lines with `variables` and the tiny options; their outputs."""
    outputs = []
    for words in commands:
        line = [string.Template(word).substitute(variables) for word in words]
        program, *arguments = line
        arguments += TINY_OPTIONS.get((program, arguments[0]), [])
        result = CliRunner().invoke(CLIS[program], arguments)
        assert result.exit_code == 0, f"{shlex.join(line)}\n{result.output}"
        assert "Traceback" not in result.output
        outputs.append(result.output)
    return outputs


def test_the_readme_block_runs_end_to_end_on_tiny_local_pieces(pieces):
    _, commands = readme_block()
    outputs = run_lines(commands, pieces)
    work = Path(pieces["W"])

    stage0 = load_file(work / "stage0" / "model.safetensors")
    llm = load_file(Path(pieces["LLM"]) / "model.safetensors")
    for name, tensor in llm.items():
        assert torch.equal(stage0[name], tensor), name
    template = ChatTemplate.from_dir(work / "stage0")
    assert template.source == ChatTemplate.default().source
    encoder = RiceViT.from_pretrained(pieces["VIT"]).state_dict()
    for name, tensor in encoder.items():
        if not name.startswith("post_layernorm"):
            assert torch.equal(stage0[f"visual.{name}"], tensor), name

    for stage, samples in (("stage1", 6), ("stage1_5", 6), ("stage2", 8)):
        report = load_report(work / "data" / stage)
        assert report.counts.packed == samples
        assert report.counts.rejected == 0
        fit = report.run_fit
        assert fit["recipe"] == f"{stage}-4b"
        assert fit["samples"] == samples
        assert fit["tokens"] == report.tokens.llm_tokens
        assert fit["epochs_per_run"] == round(
            fit["steps"] * fit["grad_accumulation"] / fit["micro_batches_per_epoch"], 4
        )
        assert [row["step"] for row in read_metrics(work / "runs" / stage / "metrics.jsonl")] == [
            1,
            2,
        ]
    prepare_lines = [output for output in outputs if "epochs per run" in output]
    assert len(prepare_lines) == 3

    def weights(folder: str) -> dict[str, torch.Tensor]:
        return load_file(work / folder / "model.safetensors")

    stage1, stage1_5 = weights("models/stage1"), weights("models/stage1_5")
    changed = {name for name in stage0 if not torch.equal(stage0[name], stage1[name])}
    assert changed
    assert all(name.startswith("visual.merger.") for name in changed)
    assert not torch.equal(
        stage1_5["model.embed_tokens.weight"], stage1["model.embed_tokens.weight"]
    )
    stage2 = weights("models/stage2")
    assert {tensor.dtype for tensor in stage2.values()} == {torch.bfloat16}
    assert not torch.equal(
        stage2["model.embed_tokens.weight"].float(),
        stage1_5["model.embed_tokens.weight"].to(torch.bfloat16).float(),
    )

    results = json.loads((work / "eval" / "stage2" / "results.json").read_text())
    (task,) = results["tasks"]
    assert task["task"] == "jsonl"
    assert task["num_samples"] == 3
    assert 0.0 <= task["metrics"]["score"] <= 1.0
    predictions = (work / "eval" / "stage2" / task["predictions"]).read_text().splitlines()
    assert len(predictions) == 3
    assert outputs[-1].endswith("\n")


def test_a_qwen2_5_folder_with_a_tied_head_goes_through_stage_1_the_same_way(pieces, tmp_path):
    """Qwen2.5 differs from Qwen3 where Stage-0 and training must follow: q/k/v biases, no QK
    norm, no head_dim in config.json and, up to 3B, the output head tied to the embeddings."""
    qwen3 = Path(pieces["LLM"])
    llm = tmp_path / "Qwen2.5-tiny"
    shutil.copytree(qwen3, llm)
    config = json.loads((llm / "config.json").read_text())
    del config["head_dim"]
    config |= {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    config["tie_word_embeddings"] = True
    (llm / "config.json").write_text(json.dumps(config))
    tensors = {
        name: tensor
        for name, tensor in load_file(qwen3 / "model.safetensors").items()
        if not name.endswith(("q_norm.weight", "k_norm.weight")) and name != "lm_head.weight"
    }
    for name in list(tensors):
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            tensors[name.replace(".weight", ".bias")] = torch.full((tensors[name].shape[0],), 0.01)
    save_file(tensors, llm / "model.safetensors")

    _, commands = readme_block()
    stage1 = [w for w in commands if {"stage1-$SIZE", "$W/runs/stage1"} & set(w)]
    assert [words[:2] for words in stage1] == [
        ["ov-train", "prepare"],
        ["ov-train", "run"],
        ["ov-train", "export"],
    ]
    variables = {**pieces, "LLM": str(llm), "W": str(tmp_path / "work")}
    run_lines([commands[0], *stage1], variables)
    work = tmp_path / "work"
    stage0 = load_file(work / "stage0" / "model.safetensors")
    exported = load_file(work / "models" / "stage1" / "model.safetensors")
    assert "lm_head.weight" not in exported
    assert torch.equal(
        exported["model.layers.0.self_attn.q_proj.bias"],
        tensors["model.layers.0.self_attn.q_proj.bias"],
    )
    changed = {name for name in stage0 if not torch.equal(stage0[name], exported[name])}
    assert changed
    assert all(name.startswith("visual.merger.") for name in changed)
    assert LlavaOV.from_pretrained(work / "models" / "stage1").config.text.tie_word_embeddings
