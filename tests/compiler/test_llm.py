"""LLM artifacts: prefill + static-KV-cache decode in one folder, greedy ``generate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from compiler.errors import ArtifactError, InputError
from compiler.examples import make_example
from compiler.llm import build_causal_lm, load_causal_lm

pytestmark = pytest.mark.tvm

PROMPT = [5, 17, 300, 42, 7]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def built(request, tmp_path_factory):
    wrapped, _, _ = make_example(request.param, layers=2, hidden=256, heads=4, vocab=1024, seq=8)
    model = wrapped.model
    out = tmp_path_factory.mktemp("llm") / f"{request.param}.llm"
    geometry = build_causal_lm(model, out, prefill_len=16, max_context=48)
    return model, out, geometry


def test_generate_matches_a_full_forward_pass(built):
    model, out, geometry = built
    assert geometry.layers == 2 and geometry.max_context == 48
    lm = load_causal_lm(out)
    logits: list[np.ndarray] = []
    tokens = lm.generate(PROMPT, 24, logits=logits)
    assert len(tokens) == 24 == len(logits)
    # Every step's logits equal those of one uncached forward pass over prompt + generated tokens.
    with torch.no_grad():
        full = model(input_ids=torch.tensor([PROMPT + tokens]), use_cache=False).logits[0].numpy()
    expected = full[len(PROMPT) - 1 : len(PROMPT) - 1 + len(tokens)]
    for step, (got, want) in enumerate(zip(logits, expected, strict=True)):
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error <= 1e-4, (step, error)
        assert int(np.argmax(got)) == tokens[step]


def test_generation_stops_at_eos_and_at_a_full_cache(built):
    _, out, geometry = built
    lm = load_causal_lm(out)
    first = lm.generate(PROMPT, 3)
    assert lm.generate(PROMPT, 10, eos=first[0]) == first[:1]
    long = lm.generate(PROMPT, 1000)
    assert len(long) == geometry.max_context - len(PROMPT) + 1


def test_bad_prompts_are_refused(built):
    _, out, geometry = built
    lm = load_causal_lm(out)
    with pytest.raises(InputError, match="this artifact takes 1..16"):
        lm.generate(list(range(geometry.prefill_len + 1)), 2)
    with pytest.raises(InputError, match="token ids must be in"):
        lm.generate([geometry.vocab], 2)


def test_tampered_llm_artifact_is_refused(built, tmp_path):
    _, out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    description = json.loads((copy / "llm.json").read_text())
    description["geometry"]["max_context"] = 4096
    (copy / "llm.json").write_text(json.dumps(description))
    with pytest.raises(ArtifactError, match="llm.json"):
        load_causal_lm(copy)
    with pytest.raises(ArtifactError, match="not an LLM artifact"):
        load_causal_lm(out / "decode")
