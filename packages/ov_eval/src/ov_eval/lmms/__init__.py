"""lmms-eval plugin: `--model onevision` runs any onevision / LLaVA-OV-1.5 checkpoint in lmms-eval.

Use (with the `lmms-eval` extra installed):

    LMMS_EVAL_PLUGINS=ov_eval.lmms python -m lmms_eval --model onevision \\
        --model_args pretrained=/path/to/checkpoint,max_pixels=3240000 --tasks mmstar

lmms-eval imports `ov_eval.lmms.models` and finds the model class through its
`AVAILABLE_MODELS`. The class (`models/onevision.py`) is a thin lmms-eval shell around
`OneVisionAdapter` (`adapter.py`), which holds all the logic and does not import lmms-eval, so it is
tested without it.
"""
