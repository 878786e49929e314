"""Models this plugin adds to lmms-eval: name -> class, in `ov_eval.lmms.models.<name>`."""

AVAILABLE_MODELS = {"onevision": "OneVision"}
