"""How lmms-eval finds `--model onevision`: a manifest behind a `lmms_eval.models` entry point.

lmms-eval (>= 0.7) keeps a registry of `ModelManifest`s: its own models, then the manifests that
installed packages publish in the `lmms_eval.models` entry-point group. ov-eval declares, in its
`pyproject.toml`,

    [project.entry-points."lmms_eval.models"]
    onevision = "ov_eval.lmms.manifest:onevision_manifest"

so installing ov-eval with the `lmms-eval` extra is all it takes. The older `LMMS_EVAL_PLUGINS`
variable (deprecated in lmms-eval) still works: it reads `ov_eval.lmms.models.AVAILABLE_MODELS`,
which names the same class.

A manifest holds a "simple" class path, a "chat" one, or both; lmms-eval prefers the chat class.
`OneVision` is a simple model (`is_simple = True`): it receives the task's prompt text and its
images and renders the conversation itself, exactly as `ov-eval run` does. A chat class would
receive lmms-eval's message lists instead, and lmms-eval builds only generation requests for chat
models, so the log-likelihood (multiple-choice) tasks the simple class answers would be lost.

lmms-eval is imported inside the function: this module, like all of ov_eval, imports without it.
"""

from ov_eval.lmms.models import AVAILABLE_MODELS

MODEL_ID = "onevision"
CLASS_PATH = f"ov_eval.lmms.models.{MODEL_ID}.{AVAILABLE_MODELS[MODEL_ID]}"


def onevision_manifest():
    """lmms-eval's `ModelManifest` for `--model onevision` (the simple class `OneVision`)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)
