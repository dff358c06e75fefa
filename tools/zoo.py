"""Model zoo: many architectures × recipes through ``compiler.build``, checked against onnxruntime.

    python tools/zoo.py [--models gpt2,llama,...] [--recipes O1,int8,int4] [--json zoo.json]
                        [--lengths 5,12,23] [--out DIR] [--keep]

Architectures come from ``transformers`` configs with seeded random weights (nothing is
downloaded): small configs (2 layers, hidden 64–128) of GPT-2, Llama, Qwen2, Mistral, Phi (phi-1/2
style), Gemma, BERT, the T5 encoder and ViT, plus the sample CNNs that ship inside the ``onnx``
wheel (``onnx/backend/test/data/light``: ResNet-50, SqueezeNet, … with constant-filled weights).

Decoders are exported with a **dynamic sequence length** (``torch.export.Dim``): one build, with
the dimension symbolic, serves every length. The build verifies the artifact at one length; the
zoo then runs the same artifact at each of ``--lengths`` and compares it with onnxruntime running
the build's optimized model on the same tokens.

Recipes (``RECIPES``): ``O1`` (cleanup), ``int8`` (``quantize(bits=8,group=0)``: per output
channel) and ``int4`` (``quantize(bits=4,group=32)``: 32 divides every hidden size here). The
build's backend check compares the artifact with onnxruntime running the *optimized* (quantized)
model, so the tolerance is the build's fp32 one (``compiler.builder.DEFAULT_TOLERANCE``, 1e-3
normalized max error) for every recipe: both runtimes dequantize the same int4/int8 codes
exactly, and what differs is float reassociation only. What quantization costs (optimized model
against the input model) is reported separately as ``quant_error``, not judged.

Prints a table (architecture × recipe: pass/fail, error, build seconds, failing stage and a
one-line reason) and writes JSON with ``--json``. Exit status 1 when a cell fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compiler.examples import _wrap  # noqa: E402  (one tensor out, no KV cache)

RECIPES: dict[str, str] = {
    "O1": "O1",
    "int8": "cleanup,quantize(bits=8,group=0)",
    "int4": "cleanup,quantize(bits=4,group=32)",
}
SEQ_DIM = "seq"  # the symbolic sequence dimension of the decoders
EXPORT_SEQ = 8  # example length for torch.export (the exported model is length-generic)
BUILD_SEQ = 8  # the length the build's own verification uses
DEFAULT_LENGTHS = (5, 12, 23)  # lengths the dynamic artifacts are run at after the build
MAX_POSITIONS = 64
VOCAB = 256


@dataclasses.dataclass(frozen=True)
class Arch:
    """One zoo architecture: how to make it, and whether its sequence length is dynamic."""

    name: str
    kind: str  # "decoder" (dynamic length), "encoder", "vision" or "cnn" (an onnx sample)
    make: Callable[[], tuple[Any, tuple, list[str], str]] | None = None  # torch maker
    path: Path | None = None  # an ONNX file (the onnx wheel's sample CNNs)

    @property
    def dynamic(self) -> bool:
        return self.kind == "decoder"


def _decoder(config_class: str, model_class: str, **config: Any):
    """A maker for a causal LM from a transformers config (eager attention, seeded weights)."""

    def make():
        import torch
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_class)(
            vocab_size=VOCAB,
            max_position_embeddings=MAX_POSITIONS,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            **config,
        )
        cfg._attn_implementation = "eager"
        model = getattr(transformers, model_class)(cfg).eval()
        ids = torch.randint(0, VOCAB, (1, EXPORT_SEQ))
        return _wrap(model, "logits", ("input_ids",)), (ids,), ["input_ids"], "logits"

    return make


def _gpt2():
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=MAX_POSITIONS,
        bos_token_id=0,
        eos_token_id=0,
    )
    cfg._attn_implementation = "eager"
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, VOCAB, (1, EXPORT_SEQ))
    return _wrap(model, "logits", ("input_ids",)), (ids,), ["input_ids"], "logits"


def _bert():
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=MAX_POSITIONS,
    )
    cfg._attn_implementation = "eager"
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    mask = torch.ones((1, 16), dtype=torch.int64)
    wrapped = _wrap(model, "last_hidden_state", ("input_ids", "attention_mask"))
    return wrapped, (ids, mask), ["input_ids", "attention_mask"], "last_hidden_state"


def _t5_encoder():
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / Flan-T5 style
    )
    cfg._attn_implementation = "eager"
    model = transformers.T5EncoderModel(cfg).eval()
    ids = torch.randint(0, VOCAB, (1, 16))
    wrapped = _wrap(model, "last_hidden_state", ("input_ids",))
    return wrapped, (ids,), ["input_ids"], "last_hidden_state"


def _vit():
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    cfg._attn_implementation = "eager"
    model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    pixels = torch.randn(1, 3, 32, 32)
    wrapped = _wrap(model, "last_hidden_state", ("pixel_values",))
    return wrapped, (pixels,), ["pixel_values"], "last_hidden_state"


_SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}


def _architectures() -> dict[str, Arch]:
    archs = [
        Arch("gpt2", "decoder", _gpt2),
        Arch(
            "llama",
            "decoder",
            _decoder(
                "LlamaConfig",
                "LlamaForCausalLM",
                **_SMALL,
                intermediate_size=192,
                num_key_value_heads=2,
            ),
        ),
        Arch(
            "qwen2",
            "decoder",
            _decoder(
                "Qwen2Config",
                "Qwen2ForCausalLM",
                **_SMALL,
                intermediate_size=192,
                num_key_value_heads=2,
            ),
        ),
        Arch(
            "mistral",
            "decoder",
            _decoder(
                "MistralConfig",
                "MistralForCausalLM",
                **_SMALL,
                intermediate_size=192,
                num_key_value_heads=2,
                sliding_window=16,  # shorter than the longest length run, so it masks
            ),
        ),
        Arch(
            "phi",
            "decoder",
            _decoder(
                "PhiConfig",
                "PhiForCausalLM",
                **_SMALL,
                intermediate_size=256,
                partial_rotary_factor=0.5,  # phi-1/2: rotary on half of each head
            ),
        ),
        Arch(
            "gemma",
            "decoder",
            _decoder(
                "GemmaConfig",
                "GemmaForCausalLM",
                **_SMALL,
                intermediate_size=192,
                num_key_value_heads=1,  # multi-query attention, as Gemma-2B
                head_dim=16,
            ),
        ),
        Arch("bert", "encoder", _bert),
        Arch("t5-encoder", "encoder", _t5_encoder),
        Arch("vit", "vision", _vit),
    ]
    for path in sample_cnns():
        name = path.stem.removeprefix("light_").removeprefix("bvlc_").replace("_", "-")
        archs.append(Arch(name, "cnn", path=path))
    return {a.name: a for a in archs}


def sample_cnns() -> list[Path]:
    """The sample CNNs bundled in the installed onnx wheel (its backend test data), if any."""
    import onnx

    folder = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return sorted(folder.glob("light_*.onnx")) if folder.is_dir() else []


ARCHS: dict[str, Arch] = _architectures()


def export(arch: Arch, folder: Path) -> tuple[Path, list[str]]:
    """Exports ``arch`` to ``folder/model.onnx`` (decoders with a dynamic ``seq``); returns the
    path and the names of its inputs."""
    import onnx_ir as ir

    from compiler.frontends.torch_module import load_torch

    if arch.path is not None:
        return arch.path, []
    import torch

    module, inputs, names, output = arch.make()
    dynamic = None
    if arch.dynamic:
        seq = torch.export.Dim(SEQ_DIM, min=2, max=MAX_POSITIONS)
        # The wrapper takes ``*args``: one entry (a tuple, one spec per tensor) for all of them.
        dynamic = (tuple({1: seq} for _ in inputs),)
    model = load_torch(
        module, inputs, input_names=names, output_names=[output], dynamic_shapes=dynamic
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    ir.save(model, path)
    return path, names


def prepare_cnn(path: Path, folder: Path, *, seed: int = 0) -> Path:
    """A copy of an onnx sample CNN with seeded random weights that are constants.

    The samples are IR version 3 "light" models: every weight is ``ConstantOfShape(0.02)``, so
    all channels are equal and the final softmax is exactly uniform (0.001 everywhere) whatever
    the compiler does — a comparison that cannot fail. Each fill becomes a seeded random
    initializer of the same shape instead: He-scaled normal for weights (rank ≥ 2), uniform in
    [0.5, 1.5] for vectors (biases, batch-norm scales and variances, which must stay positive).
    Initializers are also dropped from the graph inputs (IR 3 lists them there as overridable
    defaults), so they are constants and the signature is the image alone; and the logits before
    the final softmax become an output (with random weights the softmax saturates to one-hot,
    where any two runtimes agree exactly).
    """
    import onnx_ir as ir

    from compiler.ir_utils import add_initializer

    rng = np.random.default_rng(seed)
    model = ir.load(path)
    graph = model.graph
    real = [v for v in graph.inputs if v.name not in graph.initializers]
    graph.inputs.clear()
    graph.inputs.extend(real)
    model.ir_version = max(model.ir_version or 0, 4)
    for node in list(graph):
        shape_value = node.inputs[0] if node.op_type == "ConstantOfShape" else None
        if shape_value is None or shape_value.const_value is None:
            continue
        shape = tuple(int(d) for d in shape_value.const_value.numpy())
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            array = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            array = rng.uniform(0.5, 1.5, shape)
        output = node.outputs[0]
        name = output.name
        output.name = f"{name}__fill"
        weight = add_initializer(graph, name, array.astype(np.float32))
        ir.convenience.replace_all_uses_with(output, weight)
        graph.remove(node, safe=True)
    for output in list(graph.outputs):
        producer = output.producer()
        if producer is not None and producer.op_type == "Softmax":
            logits = producer.inputs[0]
            logits.dtype, logits.shape = output.dtype, output.shape  # Softmax keeps both
            graph.outputs.append(logits)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / path.name
    ir.save(model, out)
    return out


# The build reports its progress in these steps; the last one seen names the failing stage.
_STAGES = (
    ("loading", "load"),
    ("reference", "reference"),
    ("running passes", "passes"),
    ("optimized model", "passes"),
    ("compiling", "compile"),
    ("writing", "write"),
    ("checking", "verify"),
    ("timing", "latency"),
)


def _stage(step: str) -> str:
    return next((stage for key, stage in _STAGES if key in step), step)


def _one_line(error: BaseException, limit: int = 320) -> str:
    """The error's first line; long ones keep their start and end (where runtimes put the cause)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    if len(text) > limit:
        text = f"{text[: limit // 2 - 2]} … {text[-(limit // 2 - 2) :]}"
    return text


def _length_inputs(manifest: dict, length: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids over the whole vocabulary (the build's own check uses ids in [0, 2))."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in manifest["inputs"]:
        shape = [d if isinstance(d, int) else length for d in spec["shape"]]
        if np.issubdtype(np.dtype(spec["dtype"]), np.integer):
            feeds[spec["name"]] = rng.integers(0, VOCAB, size=shape).astype(spec["dtype"])
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(spec["dtype"])
    return feeds


def check_lengths(artifact: Path, lengths: list[int], tolerance: float) -> list[dict[str, Any]]:
    """Runs the artifact at each length and compares with onnxruntime on its optimized model.

    Raises ``CompilerError`` (from the runtime) when the artifact refuses an input; returns one
    record per length (``error``: normalized max error over the outputs).
    """
    import compiler.runtime
    from backends.onnxruntime.reference import ReferenceSession
    from compiler.artifact import ONNX_FILE
    from compiler.numerics import max_error

    model = compiler.runtime.load(artifact)
    reference = ReferenceSession(artifact / ONNX_FILE)
    records = []
    for length in lengths:
        feeds = _length_inputs(model.manifest, length, seed=length)
        ours = model(feeds)
        expected = reference.run(feeds)
        errors = max_error(ours, expected)
        worst = max(errors.values(), default=0.0)
        shapes = {name: list(value.shape) for name, value in ours.items()}
        records.append(
            {"length": length, "error": worst, "passed": worst <= tolerance, "shapes": shapes}
        )
    return records


def run_cell(
    arch: Arch, recipe: str, source: Path, out: Path, lengths: list[int], tolerance: float
) -> dict[str, Any]:
    """Builds ``source`` under ``recipe`` and checks it; a result record, never an exception."""
    import compiler

    record: dict[str, Any] = {
        "model": arch.name,
        "kind": arch.kind,
        "recipe": recipe,
        "passes": RECIPES[recipe],
        "dynamic": arch.dynamic,
        "status": "fail",
        "error": None,
        "quant_error": None,
        "build_seconds": None,
        "stage": None,
        "reason": None,
    }
    steps = ["start"]
    dims = {SEQ_DIM: BUILD_SEQ} if arch.dynamic else None
    start = time.perf_counter()
    try:
        result = compiler.build(
            source,
            out,
            passes=RECIPES[recipe],
            dims=dims,
            tolerance=tolerance,
            latency_runs=0,
            progress=steps.append,
        )
    except Exception as e:  # a zoo cell records any failure and goes on
        record["build_seconds"] = round(time.perf_counter() - start, 2)
        record["stage"] = _stage(steps[-1])
        record["reason"] = _one_line(e)
        if not isinstance(e, compiler.CompilerError):
            record["traceback"] = traceback.format_exc(limit=-3)
        return record
    record["build_seconds"] = round(time.perf_counter() - start, 2)
    verification = result.report["verification"]
    accuracy = result.report["accuracy"]
    record["error"] = verification.get("max_error")
    record["tolerance"] = verification.get("tolerance")
    record["quant_error"] = accuracy.get("error_vs_input_model")
    record["quantized_layers"] = len(accuracy.get("layers", []))
    record["inputs"] = result.manifest["inputs"]
    if arch.dynamic:
        try:
            checks = check_lengths(out, lengths, tolerance)
        except Exception as e:
            record["stage"], record["reason"] = "lengths", _one_line(e)
            return record
        record["lengths"] = checks
        record["error"] = max([record["error"], *(c["error"] for c in checks)])
        failed = [c for c in checks if not c["passed"]]
        if failed:
            record["stage"] = "lengths"
            record["reason"] = (
                f"length {failed[0]['length']}: normalized max error {failed[0]['error']:.3g} "
                f"above {tolerance:g}"
            )
            return record
    record["status"] = "pass"
    return record


def _quant_cell(record: dict[str, Any]) -> str:
    if record["recipe"] == "O1" or record["build_seconds"] is None or record["error"] is None:
        return "-"
    layers = record.get("quantized_layers", 0)
    if record["quant_error"] is None:
        return f"- ({layers})"  # nothing quantizable: no MatMul/Gemm (a CNN's 1x1 conv head)
    return f"{record['quant_error']:.2e} ({layers})"


def _format_table(records: list[dict[str, Any]]) -> str:
    header = (
        "model",
        "kind",
        "recipe",
        "result",
        "error",
        "quant err (layers)",
        "build s",
        "stage",
        "reason",
    )
    rows = [header]
    for r in records:
        lengths = r.get("lengths")
        kind = r["kind"] + (
            f" (seq {','.join(str(c['length']) for c in lengths)})" if lengths else ""
        )
        rows.append(
            (
                r["model"],
                kind,
                r["recipe"],
                r["status"].upper(),
                f"{r['error']:.2e}" if r["error"] is not None else "-",
                _quant_cell(r),
                f"{r['build_seconds']:.1f}" if r["build_seconds"] is not None else "-",
                r["stage"] or "",
                r["reason"] or "",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    from importlib import metadata

    versions = {}
    for dist in ("apache-tvm", "onnx", "onnxruntime", "torch", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"python": platform.python_version(), "machine": platform.machine(), **versions}


def run_zoo(
    models: list[str],
    recipes: list[str],
    *,
    lengths: list[int],
    work: Path,
    tolerance: float,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Exports each model once, builds it under each recipe; returns the JSON-ready summary."""
    from compiler.quiet import quiet_loggers

    records: list[dict[str, Any]] = []
    for name in models:
        arch = ARCHS[name]
        start = time.perf_counter()
        try:
            with quiet_loggers("onnx_ir", "onnxscript"):
                if arch.path is not None:
                    source = prepare_cnn(arch.path, work / name)
                else:
                    source, _ = export(arch, work / name)
        except Exception as e:
            reason = _one_line(e)
            for recipe in recipes:
                records.append(
                    {
                        "model": name,
                        "kind": arch.kind,
                        "recipe": recipe,
                        "passes": RECIPES[recipe],
                        "dynamic": arch.dynamic,
                        "status": "fail",
                        "error": None,
                        "quant_error": None,
                        "build_seconds": None,
                        "stage": "export",
                        "reason": reason,
                    }
                )
            progress(f"{name}: export failed: {reason}")
            continue
        export_seconds = round(time.perf_counter() - start, 2)
        for recipe in recipes:
            with quiet_loggers("onnx_ir", "onnxscript"):
                record = run_cell(
                    arch, recipe, source, work / name / f"out-{recipe}", lengths, tolerance
                )
            record["export_seconds"] = export_seconds
            records.append(record)
            detail = record["reason"] or f"error {record['error']:.2e}"
            progress(f"{name} {recipe}: {record['status']} ({record['build_seconds']} s) {detail}")
    passed = sum(r["status"] == "pass" for r in records)
    return {
        "tool": "tools/zoo.py",
        "environment": _environment(),
        "recipes": {r: RECIPES[r] for r in recipes},
        "dynamic_dim": SEQ_DIM,
        "build_length": BUILD_SEQ,
        "lengths": lengths,
        "tolerance": tolerance,
        "tolerance_note": (
            "normalized max error of the artifact against onnxruntime running the build's "
            "optimized model, for every recipe: int8/int4 codes are dequantized exactly by both "
            "runtimes, so only float reassociation differs; quant_error (optimized vs input "
            "model) is what quantization costs, reported and not judged"
        ),
        "sample_cnns": [str(p.name) for p in sample_cnns()],
        "summary": {"cells": len(records), "passed": passed, "failed": len(records) - passed},
        "results": records,
    }


def main(argv: list[str] | None = None) -> int:
    from compiler.builder import DEFAULT_TOLERANCE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated, from: {','.join(ARCHS)}")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument(
        "--lengths",
        default=",".join(map(str, DEFAULT_LENGTHS)),
        help="sequence lengths each dynamic decoder artifact is run at after its build",
    )
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--out", type=Path, help="keep exports and artifacts here")
    parser.add_argument("--list", action="store_true", help="list models and recipes, then exit")
    args = parser.parse_args(argv)
    if args.list:
        for arch in ARCHS.values():
            print(f"{arch.name:16} {arch.kind}{' (dynamic seq)' if arch.dynamic else ''}")
        for name, text in RECIPES.items():
            print(f"recipe {name:8} {text}")
        return 0
    models = args.models.split(",") if args.models else list(ARCHS)
    recipes = args.recipes.split(",")
    unknown = [m for m in models if m not in ARCHS] + [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown model or recipe {unknown[0]!r} (see --list)")
    lengths = [int(x) for x in args.lengths.split(",") if x]
    if any(not 2 <= n <= MAX_POSITIONS for n in lengths):
        parser.error(f"--lengths must lie in [2, {MAX_POSITIONS}] (the exported range of seq)")
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    work = args.out or Path(tempfile.mkdtemp(prefix="zoo-"))
    try:
        summary = run_zoo(
            models,
            recipes,
            lengths=lengths,
            work=work,
            tolerance=args.tolerance,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(_format_table(summary["results"]))
    s = summary["summary"]
    print(f"\n{s['passed']}/{s['cells']} passed")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0 if s["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
