"""Example models built from ``transformers`` configs with a fixed seed (no download).

Each maker returns ``(module, example_inputs, input_names)`` where the module returns one tensor
(logits or the last hidden state), so the exported ONNX model has a single named output.
``export_onnx`` writes one to disk for the CLI and the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["EXAMPLES", "export_onnx", "make_example"]


def _wrap(model, output: str, keys: tuple[str, ...]):
    """Wraps a transformers model so that it returns one tensor and builds no KV cache."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args):
            kwargs = dict(zip(keys, args, strict=True))
            if output == "logits":
                kwargs["use_cache"] = False
            return getattr(self.model(**kwargs), output)

    return Wrapper().eval()


def _instantiate(config, model_factory, *, seed: int, vocab: int, seq: int):
    """Seeds torch, builds the model with eager attention, and draws example token ids."""
    import torch

    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    model = model_factory(config).eval()
    return model, torch.randint(0, vocab, (1, seq))


def gpt2(
    *,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    vocab: int = 1024,
    seq: int = 32,
    seed: int = 0,
):
    import transformers

    config = transformers.GPT2Config(
        n_layer=layers,
        n_embd=hidden,
        n_head=heads,
        vocab_size=vocab,
        n_positions=max(128, seq),
        bos_token_id=0,
        eos_token_id=0,
    )
    model, ids = _instantiate(config, transformers.GPT2LMHeadModel, seed=seed, vocab=vocab, seq=seq)
    return _wrap(model, "logits", ("input_ids",)), (ids,), ["input_ids"]


def llama(
    *,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 1024,
    seq: int = 32,
    seed: int = 0,
):
    """Llama-style: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU."""
    import transformers

    config = transformers.LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=max(128, seq),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model, ids = _instantiate(
        config, transformers.LlamaForCausalLM, seed=seed, vocab=vocab, seq=seq
    )
    return _wrap(model, "logits", ("input_ids",)), (ids,), ["input_ids"]


def bert(
    *,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    vocab: int = 1024,
    seq: int = 32,
    seed: int = 0,
):
    """BERT encoder without the pooler; returns the last hidden state."""
    import torch
    import transformers

    config = transformers.BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_attention_heads=heads,
        vocab_size=vocab,
        max_position_embeddings=max(128, seq),
    )
    model, ids = _instantiate(
        config,
        lambda c: transformers.BertModel(c, add_pooling_layer=False),
        seed=seed,
        vocab=vocab,
        seq=seq,
    )
    mask = torch.ones((1, seq), dtype=torch.int64)
    wrapped = _wrap(model, "last_hidden_state", ("input_ids", "attention_mask"))
    return wrapped, (ids, mask), ["input_ids", "attention_mask"]


EXAMPLES: dict[str, Callable[..., tuple[Any, tuple, list[str]]]] = {
    "gpt2": gpt2,
    "llama": llama,
    "bert": bert,
}


def make_example(name: str = "gpt2", **config: Any):
    """Returns ``(module, example_inputs, input_names)`` for a named example architecture."""
    if name not in EXAMPLES:
        raise KeyError(f"unknown example {name!r}; choose from {sorted(EXAMPLES)}")
    return EXAMPLES[name](**config)


def export_onnx(name: str, path: str | Path, **config: Any) -> Path:
    """Exports a named example to ``path`` (a single ``.onnx`` file) and returns the path."""
    import onnx_ir as ir

    from compiler.frontends.torch_module import load_torch

    module, inputs, names = make_example(name, **config)
    output = "last_hidden_state" if name == "bert" else "logits"
    model = load_torch(module, inputs, input_names=names, output_names=[output])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ir.save(model, path)
    return path
