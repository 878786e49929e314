"""How well region embeddings recover what is in the region: retrieval and a linear probe.

Given an encoder with region layers, a region manifest and the regions' ground-truth classes
(e.g. the synthetic set's `truth.jsonl`: "red circle" for an object, the word for an OCR
region), every valid region of every image is embedded with `RiceViT.encode(...,
regions=...)` (the image at native resolution, the pixel box mapped to the patch grid as in
training), then, separately for each region kind:

- **retrieval top-1**: leave-one-out nearest neighbour by cosine similarity among the regions of
  that kind; the fraction whose neighbour has the same class. Chance is about the sum of the
  squared class frequencies.
- **linear probe**: multinomial logistic regression in torch (features standardised with the
  training split's mean and std, full-batch L-BFGS, L2 penalty, fixed seed) on a stratified
  half of the regions, top-1 accuracy on the other half. A class with a single region is kept
  in the training half only.

Everything is deterministic for a seed (no data-dependent randomness beyond the seeded split).
`compare` puts two evaluations (the random init before pretraining, the encoder after) side by
side; `format_table` prints it.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rice_vit.model import RiceViT
from rice_vit.pretrain.region_manifest import RegionManifest
from rice_vit.pretrain.regions import pixel_box_to_patch_box
from rice_vit.processor import ImageProcessor
from rice_vit.region_boxes import RegionBoxes

KINDS = ("object", "ocr")
KIND_NAMES = {"object": "objects", "ocr": "words"}


@dataclass
class RegionEmbeddings:
    """Embeddings of every valid region of a manifest, with their kind and class."""

    embeddings: torch.Tensor
    """(R, hidden) float32."""
    kinds: list[str]
    classes: list[str]


@torch.no_grad()
def embed_regions(
    model: RiceViT,
    manifest: RegionManifest,
    truth: Mapping[str, list[str]],
    processor: ImageProcessor,
    *,
    batch_images: int = 16,
) -> RegionEmbeddings:
    """Embed every valid region of `manifest` (in manifest order) with `model` in eval mode;
    `truth` maps an image path (as written in the manifest) to its regions' classes."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs, kinds, classes = [], [], []
    images = list(manifest.images)
    for start in range(0, len(images), batch_images):
        chunk = images[start : start + batch_images]
        rows, grids, boxes = [], [], []
        for image in chunk:
            pixel_rows, grid = processor.process_one(image.path)
            rows.append(torch.from_numpy(pixel_rows))
            grids.append(grid)
            boxes.append(
                [
                    pixel_box_to_patch_box(region.box, (image.width, image.height), grid[1:])
                    for region in image.regions
                ]
            )
            if image.image not in truth:
                raise KeyError(f"no ground truth for image {image.image!r}")
            for region in image.regions:
                kinds.append(region.kind)
                classes.append(truth[image.image][region.index])
        output = model.encode(
            torch.cat(rows).to(device),
            torch.tensor(grids, dtype=torch.int64),
            regions=RegionBoxes.from_per_image(boxes),
        )
        outputs.append(output.region_embeddings.float().cpu())
    model.train(was_training)
    return RegionEmbeddings(torch.cat(outputs), kinds, classes)


def _class_ids(classes: list[str]) -> torch.Tensor:
    names = sorted(set(classes))
    lookup = {name: i for i, name in enumerate(names)}
    return torch.tensor([lookup[c] for c in classes], dtype=torch.int64)


def retrieval_top1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out nearest neighbour (cosine) top-1 accuracy."""
    if embeddings.shape[0] < 2:
        raise ValueError("retrieval needs at least two regions")
    unit = F.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    neighbour = similarity.argmax(dim=1)
    return (labels[neighbour] == labels).double().mean().item()


def chance_retrieval(labels: torch.Tensor) -> float:
    """Expected retrieval accuracy of a random neighbour: sum over classes of n_c (n_c - 1) /
    (n (n - 1))."""
    counts = torch.bincount(labels).double()
    n = labels.numel()
    return (counts * (counts - 1)).sum().item() / (n * (n - 1))


def stratified_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: each class's regions shuffled with `seed`, the first ceil(n/2) to
    train, the rest to test (a single-region class is in train only)."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        half = (members.numel() + 1) // 2
        train.append(members[:half])
        test.append(members[half:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def linear_probe(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    l2: float = 1e-3,
    iterations: int = 100,
) -> float:
    """Top-1 test accuracy of a logistic-regression probe (see the module docstring)."""
    train, test = stratified_split(labels, seed)
    if test.numel() == 0:
        raise ValueError("the probe needs at least one class with two regions")
    x = embeddings.double()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    classes = int(labels.max()) + 1
    torch.manual_seed(seed)
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x[train] @ weight + bias, labels[train])
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[test] @ weight + bias).argmax(1)
    return (predicted == labels[test]).double().mean().item()


def evaluate_regions(regions: RegionEmbeddings, *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per kind: regions, classes, retrieval top-1, its chance level, linear-probe accuracy."""
    results: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        chosen = [i for i, k in enumerate(regions.kinds) if k == kind]
        if len(chosen) < 2:
            continue
        labels = _class_ids([regions.classes[i] for i in chosen])
        embeddings = regions.embeddings[chosen]
        results[KIND_NAMES[kind]] = {
            "regions": len(chosen),
            "classes": int(labels.max()) + 1,
            "retrieval_top1": retrieval_top1(embeddings, labels),
            "retrieval_chance": chance_retrieval(labels),
            "probe_top1": linear_probe(embeddings, labels, seed=seed),
        }
    return results


METRICS = (("retrieval_top1", "retrieval top-1"), ("probe_top1", "linear probe top-1"))


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (kind, metric, before, after, gain) of two `evaluate_regions` results."""
    rows = []
    for kind, values in after.items():
        for key, name in METRICS:
            rows.append(
                {
                    "regions": kind,
                    "metric": name,
                    "before": before[kind][key],
                    "after": values[key],
                    "gain": values[key] - before[kind][key],
                    "chance": values["retrieval_chance"] if key == "retrieval_top1" else None,
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (accuracies in %)."""
    lines = [
        "| regions | metric | before | after | gain | chance |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        chance = "" if row["chance"] is None else f"{100 * row['chance']:.1f}%"
        lines.append(
            f"| {row['regions']} | {row['metric']} | {100 * row['before']:.1f}% | "
            f"{100 * row['after']:.1f}% | {100 * row['gain']:+.1f} | {chance} |"
        )
    return "\n".join(lines)


def write_evaluation(path: str | Path, payload: dict[str, Any]) -> None:
    """Write an evaluation (JSON)."""
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
