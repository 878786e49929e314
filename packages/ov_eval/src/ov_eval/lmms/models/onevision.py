"""The lmms-eval model class `onevision` (needs the `lmms-eval` extra; see `ov_eval.lmms`).

lmms-eval 0.7.3 calls one method per request type, each with a batch of `Instance`s whose `args`
are, for a simple model:

- `generate_until`: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
- `loglikelihood`: (context, doc_to_target, doc_to_visual, doc_id, task, split)
- `generate_until_multi_round`: (context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task,
  split). Round 0 answers the context; from round 1 on, lmms-eval's protocol (as its
  `llava_onevision` and `qwen2_vl` models run it) calls
  `doc_to_text(doc, previous_output=answers, round_idx=r, previous_round_info=info)`, which returns
  `(visuals, context, terminal, answers, info)`; the loop stops when `terminal` is true and the
  request's result is the list of answers, one per round. Each round is generated as
  `generate_until` generates, the task's `until` included (lmms-eval's `llava_onevision` ignores
  `until` in multi-round requests; of the two 0.7.3 tasks that send them, mmsearch_end2end stops
  at "ASSISTANT:" and ovo_forward only at the default "\n\n", which the adapter drops).
"""

import itertools

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from ov_eval.lmms.adapter import OneVisionAdapter


class OneVision(lmms):
    """lmms-eval's interface over `OneVisionAdapter` (batch size 1, as the release evaluates)."""

    is_simple = True

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
        """(loss, greedy) per request: the loss, not the log-probability, as lmms-eval's own models
        answer and its multiple-choice scorer (argmin) expects (see `ov_eval.lmms.adapter`)."""
        results = []
        for request in tqdm(requests, desc="onevision loglikelihood", disable=self.rank != 0):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            continuation = doc_to_target(document) if callable(doc_to_target) else doc_to_target
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            score = self.adapter.loglikelihood(context, str(continuation), visuals)
            results.append((score.loss, score.greedy))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Each request's answers, one per round, the task's `doc_to_text` driving the rounds."""
        results = []
        for request in tqdm(requests, desc="onevision multi-round", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            document = self.task_dict[task][split][doc_id]
            visuals = self._visuals(doc_to_visual, doc_id, task, split)
            answers: list[str] = []
            round_info = None
            for round_index in itertools.count():
                if round_index > 0:
                    visuals, context, terminal, answers, round_info = doc_to_text(
                        document,
                        previous_output=answers,
                        round_idx=round_index,
                        previous_round_info=round_info,
                    )
                    answers = list(answers)
                    if terminal:
                        break
                    visuals = [visual for visual in visuals or [] if visual is not None]
                answers.append(self.adapter.generate(context, visuals, dict(gen_kwargs)))
            results.append(answers)
        return results
