"""`run_quickstart`: corpus -> tokenizer and tiny model -> prepare (balance + pack) -> Stage-1 ->
Stage-1.5 -> Stage-2 -> evaluation after every stage -> summary, loss plot, HF export.

Everything runs through the same public code a real run uses: `ov_model.tiny` writes a Stage-0
checkpoint, `ov_train.data.prepare` ingests the LLaVA-style JSON (captions balanced by
`ov_concepts`, packed by `ov_packing`), the `stage*-tiny` recipes train through `Trainer` with
the packed-shard loader, `export_checkpoint` writes each stage's HF checkpoint (the next stage
starts from it), and `ov_eval` answers the held-out questions of each type with the standard
runner. The run folder keeps every intermediate product.

Timing on 2 CPU cores is dominated by Stage-2 (the question-answering stage); the defaults are
sized to finish in about two and a half minutes and to teach the tiny model the colour questions
(measured: colour 1.00, shape 0.70, count 0.78, side 0.55 against chance 0.17/0.33/0.33/0.33).
"""

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ov_train.config_io import apply_overrides
from ov_train.errors import OVTrainError
from ov_train.parallel import SingleProcess
from ov_train.quickstart import corpus
from ov_train.recipes import RECIPES


class QuickstartError(OVTrainError):
    """The quickstart cannot run as asked (the message says why)."""


STAGES = (("stage1", "stage1-tiny"), ("stage1_5", "stage1_5-tiny"), ("stage2", "stage2-tiny"))


@dataclass(frozen=True, kw_only=True)
class QuickstartConfig:
    """Sizes of the quickstart (defaults: the full CPU run of a few minutes)."""

    out: Path
    images: int = 1500
    eval_per_type: int = 40
    seed: int = 0
    stage1_steps: int = 80
    stage1_5_steps: int = 150
    stage2_steps: int = 1500
    micro_batch_tokens: int = 2048
    capacity: int = 256
    """LLM tokens per packed bin. Small on purpose: first-fit decreasing fills a bin with
    samples of similar length (here: of one question type), so a micro-batch needs several bins
    (micro_batch_tokens / capacity = 8) to mix question types; with 2 bins per step the tiny
    model settles on always giving the most frequent answer."""
    lr: float = 1e-3
    max_pixels: int = 112 * 112
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("images", "eval_per_type", "stage1_steps", "stage1_5_steps", "stage2_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def steps(self, stage: str) -> int:
        """Optimizer steps of `stage`."""
        return {"stage1": self.stage1_steps, "stage1_5": self.stage1_5_steps}.get(
            stage, self.stage2_steps
        )


@dataclass
class StageSummary:
    """One stage of the run, as `summary.json` records it."""

    stage: str
    recipe: str
    steps: int
    final_loss: float | None
    tokens_per_second: float
    accuracy_before: dict[str, float]
    accuracy_after: dict[str, float]
    checkpoint: str


@dataclass
class QuickstartSummary:
    """Everything `summary.json` holds."""

    out: str
    seconds: float
    chance: dict[str, float]
    data: dict[str, dict] = field(default_factory=dict)
    stages: list[StageSummary] = field(default_factory=list)
    loss_plot: str = ""
    hf_checkpoint: str = ""


def evaluate_checkpoint(
    model_dir: Path, benchmarks: dict[str, Path], out: Path
) -> dict[str, float]:
    """Exact-match accuracy per question type of `model_dir` on the held-out benchmarks."""
    from ov_eval.generation import ModelAnswerer
    from ov_eval.runner import EvalConfig, evaluate

    answerer = ModelAnswerer(model_dir)
    accuracy = {}
    for kind, folder in benchmarks.items():
        config = EvalConfig(
            model=model_dir,
            tasks=("jsonl",),
            data_dir=folder,
            out=out / kind,
            batch_size=16,
            max_new_tokens=6,
            progress=False,
        )
        accuracy[kind] = evaluate(config, answerer).tasks[0].metrics["score"]
    return accuracy


def _prepare(
    config: QuickstartConfig, name: str, source: Path, images: Path, processor, select=None
):
    from ov_train.data.prepare import prepare
    from ov_train.data.prepare_config import LlavaSource, PrepareConfig

    return prepare(
        PrepareConfig(
            inputs=(LlavaSource(source, image_root=images),),
            out_dir=config.out / "data" / name,
            max_length=config.capacity,
            capacity=config.capacity,
            seed=config.seed,
            progress=config.progress,
        ),
        processor,
        select=select,
    )


def _train_stage(config, stage, recipe_name, start: Path, shards: Path, run_dir: Path):
    from ov_train.export import export_checkpoint
    from ov_train.source import open_packed_shards
    from ov_train.train_loop import Trainer, load_processor

    steps = config.steps(stage)
    recipe = apply_overrides(
        RECIPES[recipe_name],
        [
            f"model.path={start}",
            f"data.path={shards}",
            f"train.steps={steps}",
            "train.grad_accumulation=1",
            f"train.micro_batch_tokens={config.micro_batch_tokens}",
            f"train.seed={config.seed}",
            f"optim.lr={config.lr}",
            f"optim.lr_vision={config.lr}",
            f"checkpoint.every={steps}",
            "checkpoint.keep_last=1",
            # The tiny model trains on the CPU: a loader worker process would take a core from
            # the training computation itself (2 cores: 15.4k vs 17.9k tokens/s measured).
            "data.num_workers=0",
            f"logging.progress_bar={str(config.progress).lower()}",
        ],
    )
    processor = load_processor(recipe.model)
    source = open_packed_shards(recipe, processor, SingleProcess())
    result = Trainer(recipe, source, run_dir, resume=True).run()
    export_checkpoint(result.last_checkpoint, run_dir / "hf")
    return recipe, result


def run_quickstart(config: QuickstartConfig) -> QuickstartSummary:
    """Run the whole pipeline into `config.out` (see the module docstring)."""
    from ov_model.tiny import create_tiny_model
    from ov_train.loss_plot import plot_loss_curves
    from ov_train.quickstart.balance import concept_selector

    started = time.perf_counter()
    out = config.out
    if out.exists() and any(out.iterdir()):
        raise QuickstartError(f"{out} is not empty; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    raw = corpus.write_training_corpus(out / "raw", count=config.images, seed=config.seed)
    benchmarks = corpus.write_eval_benchmarks(
        out / "eval_data", per_type=config.eval_per_type, seed=config.seed + 1_000_003
    )
    stage0 = out / "stage0"
    _, processor = create_tiny_model(
        stage0, corpus.tokenizer_texts(), seed=config.seed, max_pixels=config.max_pixels
    )
    summary = QuickstartSummary(out=str(out), seconds=0.0, chance=dict(corpus.CHANCE))
    select = concept_selector(
        raw["concepts"], out / "balance", target=config.images, seed=config.seed
    )
    prepared = {
        "captions": _prepare(config, "captions", raw["captions"], raw["images"], processor, select),
        "questions": _prepare(config, "questions", raw["questions"], raw["images"], processor),
    }
    for name, result in prepared.items():
        summary.data[name] = _data_summary(result)

    accuracy = evaluate_checkpoint(stage0, benchmarks, out / "eval" / "stage0")
    start, curves = stage0, {}
    for stage, recipe_name in STAGES:
        data = prepared["questions" if stage == "stage2" else "captions"]
        run_dir = out / stage
        recipe, result = _train_stage(config, stage, recipe_name, start, data.shards_dir, run_dir)
        after = evaluate_checkpoint(run_dir / "hf", benchmarks, out / "eval" / stage)
        summary.stages.append(
            StageSummary(
                stage=recipe.stage,
                recipe=recipe.name,
                steps=result.final_step,
                final_loss=_final_loss(run_dir / "metrics.jsonl"),
                tokens_per_second=round(result.tokens_per_second, 1),
                accuracy_before=accuracy,
                accuracy_after=after,
                checkpoint=str(run_dir / "hf"),
            )
        )
        curves[f"Stage-{recipe.stage}"] = _loss_curve(run_dir / "metrics.jsonl")
        accuracy, start = after, run_dir / "hf"
    summary.loss_plot = str(plot_loss_curves(curves, out / "loss.png", title="quickstart loss"))
    final = out / "hf"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(start, final)
    summary.hf_checkpoint = str(final)
    summary.seconds = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _loss_curve(metrics: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [(row["step"], row["loss"]) for row in rows]


def _final_loss(metrics: Path) -> float | None:
    curve = _loss_curve(metrics)
    return round(curve[-1][1], 4) if curve else None


def _data_summary(prepared) -> dict:
    """Sample counts, packing statistics and the balancing summary of one prepared dataset."""
    import msgspec

    report = msgspec.to_builtins(prepared.report)
    return {
        "report": str(prepared.out_dir / "report.md"),
        "counts": report["counts"],
        "packing": report["packing"],
        "selection": report["selection"],
    }
