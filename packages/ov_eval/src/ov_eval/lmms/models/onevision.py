"""The lmms-eval model class `onevision` (needs the `lmms-eval` extra; see `ov_eval.lmms`)."""

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from ov_eval.lmms.adapter import OneVisionAdapter


class OneVision(lmms):
    """lmms-eval's interface over `OneVisionAdapter` (batch size 1, as the release evaluates)."""

    def __init__(
        self,
        pretrained: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | str = 1,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"onevision: unknown model_args {sorted(kwargs)}")
        if int(batch_size) != 1:
            raise ValueError("onevision runs lmms-eval requests one at a time (batch_size=1)")
        self.adapter = OneVisionAdapter(
            pretrained,
            device=device,
            dtype=dtype,
            min_pixels=int(min_pixels) if min_pixels is not None else None,
            max_pixels=int(max_pixels) if max_pixels is not None else None,
        )
        self.batch_size_per_gpu = 1

    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        return [visual for visual in visuals if visual is not None]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in tqdm(requests, desc="onevision generate", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            answers.append(self.adapter.generate(context, visuals, dict(gen_kwargs)))
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="onevision loglikelihood", disable=self.rank != 0):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(document) if callable(doc_to_target) else doc_to_target
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            results.append(self.adapter.loglikelihood(context, str(continuation), visuals))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("onevision does not support multi-round generation requests")
