"""The `ov-model` command line interface.

Every onevision CLI is a click group configured the same way: `-h/--help` on every command,
defaults shown in the help text, `--version` on the group. Heavy imports (torch) happen inside
the commands so that `--help` answers instantly. Errors about bad checkpoints or inputs end the
command with a one-line message (exit status 2), not a traceback.
"""

import sys
from pathlib import Path

import click

from ov_model import __version__
from ov_model.serve.command import serve
from rice_vit.cli_conventions import (
    Group,
    claim_output,
    device_option,
    dtype_option,
    max_shard_size_option,
    out_option,
    overwrite_option,
    seed_option,
    store_dtype_option,
)

_CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


def _usage_error(error: Exception) -> click.ClickException:
    """`error` as a one-line click error with exit status 2, the status of a bad invocation."""
    clean = click.ClickException(str(error))
    clean.exit_code = 2
    return clean


class _Group(Group):
    """Turns ov_model's and rice_vit's errors into clean CLI errors."""

    def invoke(self, ctx: click.Context):
        from ov_model.errors import OVModelError
        from rice_vit import RiceViTError

        try:
            return super().invoke(ctx)
        except (OVModelError, RiceViTError) as error:
            raise _usage_error(error) from error


def _torch_dtype(name: str):
    """The torch dtype of a --dtype/--store-dtype value; None for auto/keep (as stored)."""
    import torch

    return None if name in ("auto", "keep") else getattr(torch, name)


_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


@click.group(name="ov-model", cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ov-model")
def main() -> None:
    """LLaVA-OneVision-1.5 model: RICE-ViT + patch-merger projector + Qwen LLM, HF checkpoints,
    processor, packed forward, generation.
    """


@main.command()
@click.argument("model_dir", metavar="DIR", type=_FOLDER)
def info(model_dir: Path) -> None:
    """Print the configuration, parameter counts per module and stored dtypes of a checkpoint."""
    from ov_model.model import LlavaOV

    model = LlavaOV.from_pretrained(model_dir)
    config = model.config
    text, vision = config.text, config.vision
    kind = "Qwen3" if text.qk_norm else "Qwen2"
    click.echo(f"checkpoint   {model_dir}")
    click.echo(
        f"vision       RICE-ViT depth {vision.depth}, width {vision.hidden_size}, "
        f"{vision.num_heads} heads, patch {vision.patch_size}, merge {config.merge_size}x"
        f"{config.merge_size}"
    )
    click.echo(
        f"text         {kind} {text.num_hidden_layers} layers, width {text.hidden_size}, "
        f"{text.num_attention_heads}/{text.num_key_value_heads} heads, vocab {text.vocab_size}, "
        f"{'tied' if text.tie_word_embeddings else 'untied'} head, rope theta {text.rope_theta:g}"
    )
    click.echo(f"image token  {config.image_token_id}")
    for name in ("vision", "projector", "language_model", "lm_head"):
        module = getattr(model, name)
        if module is not None:
            count = sum(p.numel() for p in module.parameters())
            click.echo(f"params       {name:<15} {count:>15,}")
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    click.echo(f"params       {'total':<15} {model.num_parameters():>15,}  ({', '.join(dtypes)})")


@main.command()
@click.option("--vit", "vit_dir", type=_FOLDER, required=True, help="RICE-ViT checkpoint folder.")
@click.option("--llm", "llm_dir", type=_FOLDER, required=True, help="Qwen3/Qwen2 HF folder.")
@out_option("Folder for the Stage-0 model.", dest="out_dir")
@overwrite_option()
@seed_option("Seed of the fresh projector weights.")
def init(vit_dir: Path, llm_dir: Path, out_dir: Path, overwrite: bool, seed: int) -> None:
    """Stage-0: merge a RICE-ViT and a Qwen checkpoint, with a freshly initialised projector."""
    from ov_model.init import initialise

    claim_output(out_dir, overwrite, keep=(vit_dir, llm_dir))

    model = initialise(vit_dir, llm_dir, out_dir, seed=seed)
    click.echo(f"wrote {out_dir} ({model.num_parameters():,} parameters)")


@main.command()
@click.argument("model_dir", metavar="DIR", type=_FOLDER)
@store_dtype_option(
    "Dtype of the weights written; keep: as stored.",
    default="bfloat16",
    hidden_aliases=("--dtype",),
)
@max_shard_size_option("Largest shard.", hidden_aliases=("--shard-size",))
@out_option("Folder for the converted checkpoint.", dest="out_dir")
@overwrite_option()
def convert(
    model_dir: Path, store_dtype: str, max_shard_size: int, out_dir: Path, overwrite: bool
) -> None:
    """Re-save a checkpoint in another dtype and shard size (tokenizer files copied)."""
    from ov_model.checkpoint import copy_tokenizer_files
    from ov_model.model import LlavaOV

    if out_dir.resolve() == model_dir.resolve():
        raise click.BadParameter("must differ from the input folder", param_hint="--out")
    claim_output(out_dir, overwrite, keep=(model_dir,))
    model = LlavaOV.from_pretrained(model_dir, dtype=_torch_dtype(store_dtype))
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    copied = copy_tokenizer_files(model_dir, out_dir)
    click.echo(
        f"wrote {out_dir} ({store_dtype}, shards up to {max_shard_size:,} bytes; "
        f"copied {len(copied)} files)"
    )


@main.command()
@click.option("--model", "model_dir", type=_FOLDER, required=True, help="Checkpoint folder.")
@click.option(
    "--image",
    "images",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Image to show the model (repeatable; placed before the prompt).",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, help="Tokens to add.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, help="0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="0 keeps every token.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="Nucleus.")
@seed_option("Sampling seed.")
@dtype_option("Compute dtype; auto: the checkpoint's stored dtype.")
@device_option()
@click.argument("prompt")
def chat(
    model_dir: Path,
    images: tuple[Path, ...],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    dtype: str,
    device: str,
    prompt: str,
) -> None:
    """Answer PROMPT (about the --image files), streaming the tokens as they come."""
    from ov_model.model import LlavaOV
    from ov_model.processor import OVProcessor

    processor = OVProcessor.from_pretrained(model_dir)
    model = LlavaOV.from_pretrained(model_dir, dtype=_torch_dtype(dtype), device=device)
    content = "".join("<image>\n" for _ in images) + prompt
    conversation = [{"from": "human", "value": content}]
    sample = processor.prompt(conversation, images=list(images) or None)
    special = processor.tokenizer.special
    printed = ""
    generated: list[int] = []

    def show(text: str) -> None:
        nonlocal printed
        sys.stdout.write(text[len(printed) :])
        sys.stdout.flush()
        printed = text

    def stream(row: int, token: int) -> None:
        generated.append(token)
        text = processor.decode(generated)
        if not text.endswith("\ufffd"):  # hold back a character whose bytes are incomplete
            show(text)

    model.generate(
        [sample.input_ids],
        pixel_values=None if sample.pixel_values is None else sample.pixel_values.to(device),
        image_grid_thw=sample.image_grid_thw,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_token_ids=(special.im_end, special.endoftext),
        callback=stream,
    )
    show(processor.decode(generated))
    sys.stdout.write("\n")


main.add_command(serve)
