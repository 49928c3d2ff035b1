"""Device choice and autocast."""

from __future__ import annotations

import pytest
import torch

from seq2seq.device import autocast, resolve_device
from seq2seq.errors import UserError


def test_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_error_naming_the_setting():
    with pytest.raises(UserError, match=r"train.device is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'"):
        resolve_device("cuda", "train.device")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", None)])
def test_autocast_runs_matmuls_in_the_precision_asked_for(precision: str, dtype):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), precision):
        product = a @ b
    assert product.dtype == (dtype or torch.float32)
