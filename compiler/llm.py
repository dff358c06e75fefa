"""Causal language models with a static KV cache: one artifact, prefill + decode, ``generate``.

Layout of an LLM artifact folder::

    out/
      prefill/     artifact: input_ids [1, P] -> logits [1, P, V], keys/values [L, 1, KV, P, D]
      decode/      artifact: input_ids [1, 1], position_ids [1, 1], attention_mask [1, C + 1],
                   cache_k/cache_v [L, 1, KV, C, D]
                   -> logits [1, 1, V], new_k/new_v [L, 1, KV, 1, D]
      llm.json     geometry (P, C, L, KV heads, head dim, vocab)
      manifest.json  sha256 of every file above, sub-artifacts included

The cache is *static*: ``C`` slots allocated once; slot ``t`` holds the keys/values of position
``t``. A decode step attends over all ``C`` slots plus the new token, with ``attention_mask``
zero on the slots not yet filled, so every step has the same shapes (one compiled function).
Prefill runs on a prompt right-padded to ``P`` tokens: attention is causal, so the logits and
keys/values of the real tokens do not see the padding, and the padded slots are masked out.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from compiler.artifact import atomic_directory, read_manifest, write_manifest
from compiler.errors import ArtifactError, InputError

__all__ = ["CausalLM", "LLMGeometry", "build_causal_lm", "load_causal_lm"]

LLM_FILE = "llm.json"


@dataclasses.dataclass(frozen=True)
class LLMGeometry:
    """Shapes shared by the prefill and decode functions."""

    prefill_len: int
    max_context: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any, prefill_len: int, max_context: int) -> LLMGeometry:
        heads = config.num_attention_heads
        return cls(
            prefill_len=prefill_len,
            max_context=max_context,
            layers=config.num_hidden_layers,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab=config.vocab_size,
        )


def _wrappers(model: Any, geometry: LLMGeometry):
    """torch modules for prefill and decode that take and return the cache as plain tensors."""
    import torch
    from transformers.cache_utils import DynamicCache

    layers = geometry.layers

    def stack(cache, part: str, last: bool):
        tensors = [getattr(cache.layers[i], part) for i in range(layers)]
        return torch.stack([t[:, :, -1:, :] if last else t for t in tensors])

    class Prefill(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            out = self.model(input_ids=input_ids, use_cache=True)
            cache = out.past_key_values
            return out.logits, stack(cache, "keys", False), stack(cache, "values", False)

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids, attention_mask, cache_k, cache_v):
            cache = DynamicCache(config=model.config)
            for i in range(layers):
                cache.update(cache_k[i], cache_v[i], i)
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            return out.logits, stack(cache, "keys", True), stack(cache, "values", True)

    return Prefill().eval(), Decode().eval()


def _example_inputs(geometry: LLMGeometry):
    import torch

    g = geometry
    prefill = (torch.zeros((1, g.prefill_len), dtype=torch.int64),)
    cache_shape = (g.layers, 1, g.kv_heads, g.max_context, g.head_dim)
    mask = torch.zeros((1, g.max_context + 1), dtype=torch.int64)
    mask[:, -1] = 1
    decode = (
        torch.zeros((1, 1), dtype=torch.int64),
        torch.zeros((1, 1), dtype=torch.int64),
        mask,
        torch.zeros(cache_shape),
        torch.zeros(cache_shape),
    )
    return prefill, decode


def build_causal_lm(
    model: Any,
    output_dir: str | os.PathLike,
    *,
    prefill_len: int = 32,
    max_context: int = 128,
    target: str = "llvm",
    pipeline: str = "O1",
    progress=None,
) -> LLMGeometry:
    """Builds a transformers causal LM (``model.config`` read) into an LLM artifact folder.

    Preconditions: the model takes ``input_ids``, ``position_ids``, ``attention_mask`` and a
    ``DynamicCache`` as ``past_key_values`` (GPT-2, Llama, Qwen2, Mistral, …); eager attention.
    """
    from compiler.builder import build

    if not 0 < prefill_len <= max_context:
        raise InputError(f"prefill_len ({prefill_len}) must be in 1..max_context ({max_context})")
    geometry = LLMGeometry.of(model.config, prefill_len, max_context)
    prefill, decode = _wrappers(model.eval(), geometry)
    prefill_inputs, decode_inputs = _example_inputs(geometry)
    with atomic_directory(output_dir) as tmp:
        build(
            prefill,
            tmp / "prefill",
            example_inputs=prefill_inputs,
            input_names=["input_ids"],
            output_names=["logits", "keys", "values"],
            target=target,
            pipeline=pipeline,
            progress=progress,
        )
        build(
            decode,
            tmp / "decode",
            example_inputs=decode_inputs,
            input_names=["input_ids", "position_ids", "attention_mask", "cache_k", "cache_v"],
            output_names=["logits", "new_k", "new_v"],
            target=target,
            pipeline=pipeline,
            progress=progress,
        )
        description = {"geometry": dataclasses.asdict(geometry)}
        (tmp / LLM_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
        # The folder's own manifest hashes every file below it, sub-artifacts included, so the
        # generic checks (hashes, atomic replace) cover the whole LLM artifact.
        write_manifest(tmp, {"name": "causal-lm", "target": {"kind": target}, "kind": "causal-lm"})
    return geometry


class CausalLM:
    """A loaded LLM artifact: ``generate`` runs prefill once, then one decode step per token."""

    def __init__(self, path: str | os.PathLike) -> None:
        from compiler.runtime import load

        self.path = Path(path)
        read_manifest(self.path)  # verifies every file, both sub-artifacts included
        description = json.loads((self.path / LLM_FILE).read_text())
        self.geometry = LLMGeometry(**description["geometry"])
        # Already verified above: hashing the weights a second time would double the load time.
        self.prefill = load(self.path / "prefill", verify=False)
        self.decode = load(self.path / "decode", verify=False)

    def generate(
        self,
        prompt: list[int] | np.ndarray,
        max_new_tokens: int,
        *,
        eos: int | None = None,
        logits: list[np.ndarray] | None = None,
    ) -> list[int]:
        """Greedy decoding: the prompt's continuation, at most ``max_new_tokens`` tokens.

        Stops early at ``eos`` or when the cache is full. If ``logits`` is a list, the logits
        that chose each generated token are appended to it (for checks and scoring).
        """
        from compiler.runtime import host_zeros

        g = self.geometry
        prompt = [int(t) for t in np.asarray(prompt).ravel()]
        n = len(prompt)
        if not 0 < n <= g.prefill_len:
            raise InputError(f"the prompt has {n} tokens; this artifact takes 1..{g.prefill_len}")
        if any(not 0 <= t < g.vocab for t in prompt):
            raise InputError(f"prompt token ids must be in [0, {g.vocab})")
        ids = np.zeros((1, g.prefill_len), np.int64)
        ids[0, :n] = prompt
        out = self.prefill({"input_ids": ids})
        cache_shape = (g.layers, 1, g.kv_heads, g.max_context, g.head_dim)
        # aligned, so each decode step reads the caches in place (compiler.runtime.host_zeros)
        cache_k = host_zeros(cache_shape, np.float32)
        cache_v = host_zeros(cache_shape, np.float32)
        cache_k[:, :, :, : g.prefill_len] = out["keys"]
        cache_v[:, :, :, : g.prefill_len] = out["values"]
        step_logits = out["logits"][0, n - 1]
        token = int(np.argmax(step_logits))
        generated = [token]
        if logits is not None:
            logits.append(step_logits)
        mask = np.zeros((1, g.max_context + 1), np.int64)
        mask[0, :n] = 1
        mask[0, -1] = 1
        position = n
        while len(generated) < max_new_tokens and token != eos and position < g.max_context:
            step = self.decode(
                {
                    "input_ids": np.array([[token]], np.int64),
                    "position_ids": np.array([[position]], np.int64),
                    "attention_mask": mask,
                    "cache_k": cache_k,
                    "cache_v": cache_v,
                }
            )
            cache_k[:, :, :, position] = step["new_k"][:, :, :, 0]
            cache_v[:, :, :, position] = step["new_v"][:, :, :, 0]
            mask[0, position] = 1
            position += 1
            step_logits = step["logits"][0, -1]
            token = int(np.argmax(step_logits))
            generated.append(token)
            if logits is not None:
                logits.append(step_logits)
        return generated


def load_causal_lm(path: str | os.PathLike) -> CausalLM:
    """Loads an LLM artifact folder built by :func:`build_causal_lm`."""
    if not (Path(path) / LLM_FILE).is_file():
        raise ArtifactError(f"{path}: not an LLM artifact ({LLM_FILE} is missing)")
    return CausalLM(path)
