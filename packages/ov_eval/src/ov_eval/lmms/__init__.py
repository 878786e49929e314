"""lmms-eval plugin: `--model onevision` runs any onevision / LLaVA-OV-1.5 checkpoint in lmms-eval.

Use (with the `lmms-eval` extra installed, nothing else to set):

    python -m lmms_eval --model onevision \\
        --model_args pretrained=/path/to/checkpoint,max_pixels=3240000 --tasks mmstar

lmms-eval finds the model through the `lmms_eval.models` entry point that ov-eval's package
metadata declares: it calls `manifest.onevision_manifest()`, whose `ModelManifest` names the simple
class `ov_eval.lmms.models.onevision.OneVision`. The deprecated `LMMS_EVAL_PLUGINS=ov_eval.lmms`
still works too: lmms-eval then imports `ov_eval.lmms.models` and reads its `AVAILABLE_MODELS`.

The class (`models/onevision.py`) is a thin lmms-eval shell around `OneVisionAdapter`
(`adapter.py`), which holds all the logic and does not import lmms-eval, so it is tested without
it. Only the class module needs lmms-eval; `manifest.py` imports it when lmms-eval calls it.
"""
