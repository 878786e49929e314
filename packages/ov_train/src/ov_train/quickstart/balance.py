"""Concept balancing of the quickstart's caption corpus with ov_concepts.

The synthetic images have known content, so their embedding is given by it: a bag of concepts
(one axis per coloured shape or word, L2-normalised), and the concept vocabulary is the identity.
The rest is ov_concepts' real path, the same one a corpus embedded with CLIP takes: top-K
assignment (exact, blocked), inverse-frequency weights (rule `mean`), and an exact-size sample
with replacement, so rare colours are seen about as often as common ones.
"""

import json
from pathlib import Path

import numpy as np

from ov_train.data.selection import SelectFn, concept_balance_selector
from ov_train.quickstart.corpus import concept_names

TOP_K = 3
MIN_SIMILARITY = 0.2


def concept_selector(concepts_file: Path, work: Path, *, target: int, seed: int) -> SelectFn:
    """A prepare selection that balances the samples listed in `concepts_file`."""
    from ov_concepts.assign import AssignConfig, assign_concepts
    from ov_concepts.balance import BalanceConfig
    from ov_concepts.embeddings import EmbeddingMatrix

    per_sample: dict[str, list[str]] = json.loads(concepts_file.read_text())
    names = concept_names()
    axis = {name: index for index, name in enumerate(names)}
    keys = sorted(per_sample)
    bags = np.zeros((len(keys), len(names)), dtype=np.float32)
    for row, key in enumerate(keys):
        for concept in per_sample[key]:
            bags[row, axis[concept]] += 1.0
    bags /= np.linalg.norm(bags, axis=1, keepdims=True)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "image_embeddings.npy", bags)
    np.save(work / "concept_embeddings.npy", np.eye(len(names), dtype=np.float32))
    (work / "keys.txt").write_text("\n".join(keys) + "\n")
    assign_concepts(
        EmbeddingMatrix(work / "image_embeddings.npy"),
        EmbeddingMatrix(work / "concept_embeddings.npy"),
        work / "assigned",
        AssignConfig(topk=TOP_K, min_similarity=MIN_SIMILARITY, device="cpu"),
    )
    config = BalanceConfig(target=target, seed=seed, rule="mean", replace=True)
    return concept_balance_selector(
        work / "assigned", work / "keys.txt", config, work_dir=work / "balanced"
    )
