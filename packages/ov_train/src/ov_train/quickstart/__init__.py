"""The quickstart: a complete three-stage run on a synthetic corpus, on a laptop CPU."""
