"""What lmms-eval 0.7.3 does to a model's output before a task's scorer sees it.

Between the model and a task's `process_results`, lmms-eval's evaluator (run from its command
line) applies, in this order:

1. the task's filters (`filter_list` in its YAML; AI2D has one, most tasks none);
2. reasoning-tag stripping (`lmms_eval.api.reasoning.strip_reasoning_tags`, with the CLI's
   default `--reasoning_tags` `<think>...</think>` and `<analysis>...</analysis>`): every
   complete block is cut out, an output holding only a closing tag keeps what follows its last
   occurrence, and the result is trimmed;
3. `Task.process_results` trims the output again (`str.strip`) for generate_until tasks.

Tasks that follow lmms-eval call `lmms_eval_output` (steps 2-3) on the raw output, after their
own version of any filter, so that `<think>` blocks, leading spaces and trailing newlines count
exactly as they count in lmms-eval.
"""

REASONING_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<analysis>", "</analysis>"),
)


def strip_reasoning_tags(text: str, tags: tuple[tuple[str, str], ...] = REASONING_TAGS) -> str:
    """`text` without its reasoning blocks, trimmed: lmms-eval's `strip_reasoning_tags`."""
    result = text
    for start_tag, end_tag in tags:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start == -1 or end == -1:
                break
            result = result[:start] + result[end + len(end_tag) :]
        # A chat template may prefill the opening tag: keep what follows the last closing tag.
        if end_tag in result and start_tag not in result:
            result = result.rsplit(end_tag, 1)[-1]
    return result.strip()


def lmms_eval_output(text: str) -> str:
    """The output as a generate_until task's `process_results` receives it in lmms-eval (when
    the task has no filters): reasoning blocks removed, whitespace trimmed."""
    return strip_reasoning_tags(text).strip()
