"""The Python API's docstring examples run as written (doctest), in a directory holding runs/mlm and runs/clm."""
from __future__ import annotations

import doctest

import pytest
from helpers import save_model
from hf_parity import tiny_objective

import lmssl.inference.api


@pytest.fixture
def reader_dir(tmp_path, monkeypatch):
    for name in ("mlm", "clm"):
        cfg, tok, obj = tiny_objective({"name": name})
        save_model(tmp_path / "runs" / name, obj, cfg, tok)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_api_examples_run(reader_dir):
    result = doctest.testmod(lmssl.inference.api, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted == 9 and result.failed == 0
