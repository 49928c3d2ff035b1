"""Device choice and autocast."""

from __future__ import annotations

import pytest
import torch
from helpers import needs_native_bf16

from seq2seq import device as device_module
from seq2seq.device import autocast, check_precision, has_bf16_flag, resolve_device
from seq2seq.errors import UserError


def test_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_one_clear_error_naming_the_setting():
    with pytest.raises(UserError, match=r"train.device is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'"):
        resolve_device("cuda", "train.device")


@pytest.mark.parametrize(
    ("precision", "dtype"), [pytest.param("bf16", torch.bfloat16, marks=needs_native_bf16), ("fp32", None)]
)
def test_autocast_runs_matmuls_in_the_precision_asked_for(precision: str, dtype):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), precision):
        product = a @ b
    assert product.dtype == (dtype or torch.float32)


ZEN4_FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl"
AVX2_ONLY_FLAGS = "flags\t\t: fpu sse2 avx avx2 fma"
ARM_FEATURES = "Features\t: fp asimd sve bf16 i8mm"


def test_bf16_support_is_read_from_the_cpu_flags():
    assert has_bf16_flag(f"processor\t: 0\n{ZEN4_FLAGS}\n")
    assert has_bf16_flag(f"processor\t: 0\n{ARM_FEATURES}\n")
    assert not has_bf16_flag(f"processor\t: 0\n{AVX2_ONLY_FLAGS}\nbugs\t\t: avx512_bf16_fake\n")


@pytest.fixture
def no_native_bf16(monkeypatch):
    """This machine's CPU as if it lacked bf16 (an AVX2-only one): only the flag reading is replaced."""
    monkeypatch.setattr(device_module, "native_bf16", lambda: False)


def test_bf16_on_a_cpu_without_it_is_refused_before_any_work(no_native_bf16):
    with pytest.raises(UserError, match=r"^train.precision bf16 needs a CPU with native bf16 .*: use fp32$"):
        check_precision("cpu", "bf16", "train.precision")
    with pytest.raises(UserError, match=r"^precision bf16 needs a CPU with native bf16"):
        autocast("cpu", "bf16")
    check_precision("cpu", "fp32")  # fp32 is always fine


def test_training_and_translating_in_bf16_on_such_a_cpu_are_one_line(no_native_bf16, tmp_path, toy_model, capsys):
    from helpers import make_toy_config, one_line_error, write_toy_corpus, write_yaml

    from seq2seq.cli import main

    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"]["precision"] = "bf16"
    assert main(["train", write_yaml(tmp_path / "config.yaml", config)]) == 2
    assert one_line_error(capsys).startswith("seq2seq: error: train.precision bf16 needs a CPU with native bf16")
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
    source = tmp_path / "in.txt"
    source.write_text("uno dos\n")
    assert main(["translate", str(toy_model["checkpoint"]), "--precision", "bf16", "--input", str(source)]) == 2
    assert one_line_error(capsys).startswith("seq2seq: error: --precision bf16 needs a CPU with native bf16")
