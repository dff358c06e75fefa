"""Calibration data: ``.npz`` and text files into model feeds, and activation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.calibration import input_gram_matrices, load_calibration, text_windows
from compiler.errors import InputError
from compiler.examples import make_example
from compiler.frontends.torch_module import load_torch
from compiler.real_models import minilm_tokenizer
from tests.passes.quantize.models import correlated_inputs, linear_model


def test_npz_with_a_sample_axis_gives_one_feed_per_sample(tmp_path):
    model = linear_model(4, 32, 8)
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.zeros((5, 1, 4, 32), np.float64))
    calibration = load_calibration(path, model)
    assert len(calibration) == 5 and calibration.source == str(path)
    assert calibration.feeds[0]["x"].shape == (1, 4, 32)
    assert calibration.feeds[0]["x"].dtype == np.float32  # cast to the input's type
    np.savez(path, x=np.zeros((1, 4, 32), np.float32))
    assert len(load_calibration(path, model)) == 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((1, 4, 32))}, "no array for the model input"),
        ({"x": np.zeros((4, 32))}, "has rank 3"),
    ],
)
def test_bad_npz_files_are_explained(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_calibration(path, linear_model(4, 32, 8))


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match=r"pickled\.npz: holds object arrays \(pickles\)"):
        load_calibration(path, linear_model(4, 32, 8))


def test_text_is_tokenized_into_windows_of_the_model_length(tmp_path):
    module, inputs, names = make_example("bert", layers=1, hidden=64, heads=2, seq=16)
    model = load_torch(module, inputs, input_names=names, output_names=["h"])
    path = tmp_path / "calib.txt"
    path.write_text("The jury said it did find that many of the voters were confused. " * 8)
    tokenizer = minilm_tokenizer()
    calibration = load_calibration(path, model, tokenizer=tokenizer, samples=3)
    assert len(calibration) == 3
    feed = calibration.feeds[0]
    assert feed["input_ids"].shape == (1, 16) and feed["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(feed["attention_mask"], np.ones((1, 16), np.int64))
    ids = tokenizer(path.read_text()).input_ids
    np.testing.assert_array_equal(feed["input_ids"][0], ids[:16])
    with pytest.raises(InputError, match="needs a tokenizer"):
        load_calibration(path, model)


def test_windows_are_consecutive_and_never_partial():
    windows = text_windows(list(range(10)), 4)
    assert [w.tolist() for w in windows] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]


def test_gram_matrices_accumulate_over_feeds_and_rows():
    model = linear_model(6, 16, 16, layers=2)
    x = [correlated_inputs(6, 16, seed=s)[None] for s in range(3)]
    stats = input_gram_matrices(model, [{"x": a} for a in x], ["x", "relu0"])
    rows = np.concatenate([a[0] for a in x])
    expected = rows.astype(np.float64).T @ rows
    np.testing.assert_allclose(stats["x"].gram, expected, atol=1e-5 * np.abs(expected).max())
    assert stats["x"].rows == 18 and stats["relu0"].gram.shape == (16, 16)
    np.testing.assert_allclose(stats["x"].abs_mean, np.abs(rows).mean(0), rtol=1e-5)
    assert [o.name for o in model.graph.outputs] == ["y"]  # the probes were removed again
