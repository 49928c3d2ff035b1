"""Dynamic int8 quantization of a model for decoding on the CPU (`--quantize int8`).

The linear layers, the output layer over the vocabulary included, get int8 weights with one scale
per output row (per-channel: as fast as one scale per matrix, and a third closer to fp32 in
log-probability on the quickstart model) and quantize their inputs on the fly, one scale per call
(`torch.ao.quantization.quantize_dynamic`, fbgemm/x86 kernels). The GRUs are swapped for torch's
dynamic-quantized GRU, a C++ loop over int8 weights: seq2seq/gru.py runs its own recurrence with
`F.linear` and `torch.addmm` on its weights, which `quantize_dynamic` cannot see, and on the
quickstart model (2-core reference CPU) the linear layers alone made beam search about 1.3x as fast,
with the GRUs about 1.6x.

An input's scale is taken over the whole batch, so a sentence's scores depend slightly on the
sentences decoded with it. The quantized model is for decoding only: quantization happens in place
and cannot be undone or trained.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.ao.nn.quantized import dynamic as quantized
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.device import resolve_device
from seq2seq.errors import UserError
from seq2seq.gru import GRU

log = logging.getLogger(__name__)

Quantize = Literal["none", "int8"]
QUANTIZE_MODES: tuple[Quantize, ...] = ("none", "int8")

Model = TypeVar("Model", bound=nn.Module)

# torch marks its eager quantization API deprecated (in favour of torchao, not installed here) and warns
# on every quantized weight it creates; the API works, and a user asking for int8 needs no page of warnings.
_TORCH_WARNINGS = r"(?s).*(torch\.ao\.quantization is deprecated|quantized tensor creation functions)"


def quantized_engines() -> list[str]:
    """The quantized engines this torch build has ('fbgemm', 'x86', 'qnnpack', ...); empty without any."""
    return [engine for engine in torch.backends.quantized.supported_engines if engine != "none"]


def check_quantize_mode(mode: str) -> None:
    """A UserError unless `mode` is one of QUANTIZE_MODES."""
    if mode not in QUANTIZE_MODES:
        raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")


def decoding_device(device: str, mode: str) -> torch.device:
    """The device to decode on with quantization `mode`: int8 is CPU only ('auto' is the CPU; 'cuda' a UserError)
    and needs a quantized engine in this torch build."""
    check_quantize_mode(mode)
    if mode == "none":
        return resolve_device(device)
    if device == "cuda":
        raise UserError(f"--quantize {mode} runs on the CPU only: use --device cpu, or --quantize none on the GPU")
    if not quantized_engines():
        raise UserError(
            f"--quantize {mode} needs a quantized engine, and this torch build ({torch.__version__}) has none "
            "(torch.backends.quantized.supported_engines): use --quantize none"
        )
    return resolve_device("cpu")


def check_quantize_precision(
    mode: str, precision: str, setting: str = "--precision", quantize_setting: str = "--quantize"
) -> None:
    """int8 layers compute in their own precision: bf16 autocast on top is refused (a UserError naming both)."""
    if mode != "none" and precision != "fp32":
        raise UserError(
            f"{setting} {precision} does not combine with {quantize_setting} {mode} (the {mode} layers compute in "
            f"their own precision): decode in fp32 with {mode}, or in {precision} without it"
        )


def quantize_for_decoding(model: Model, mode: str) -> Model:
    """`model` (a Seq2Seq on the CPU, eval mode) ready to decode with quantization `mode`, changed in place.

    int8: every linear layer but a single-output one becomes dynamic-quantized (int8 weights, inputs quantized
    per batch) and every GRU torch's dynamic-quantized GRU; 'none' returns the model untouched.
    """
    check_quantize_mode(mode)
    if mode == "none":
        return model
    model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCH_WARNINGS)
        for parent, name, gru in list(_grus(model)):
            setattr(parent, name, QuantizedGRU.from_gru(gru))
        layers = {name for name, module in model.named_modules() if _quantizable_linear(module)}
        quantize_dynamic(model, dict.fromkeys(layers, per_channel_dynamic_qconfig), inplace=True)
    log.debug("Quantized for decoding: int8 linear layers and GRUs (dynamic quantization, CPU)")
    return model


def _quantizable_linear(module: nn.Module) -> bool:
    """A linear layer worth quantizing. A single-output layer is a vector: nothing to gain, and additive attention
    reads its `energy_layer.weight` as a tensor, which a quantized layer no longer has."""
    return type(module) is nn.Linear and module.out_features > 1


def _grus(model: nn.Module) -> Iterator[tuple[nn.Module, str, GRU]]:
    """(parent, attribute name, GRU) for every seq2seq GRU in `model`."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, GRU):
                yield parent, name, child


class QuantizedGRU(nn.Module):
    """A decoding-only stand-in for seq2seq.gru.GRU: torch's dynamic-quantized GRU (int8 weights, C++ recurrence)
    with the same call, forward(x [B, T, I], h0 or None, lengths or None) -> outputs [B, T, D*H], finals [L*D, B, H].

    Lengths are handled by packing, so outputs past a length are zeros and finals are the last real step's.
    """

    def __init__(self, gru: quantized.GRU):
        super().__init__()
        self.gru = gru

    @classmethod
    def from_gru(cls, gru: GRU) -> QuantizedGRU:
        """The int8 version of `gru` (its weights are read, not kept)."""
        plain = nn.GRU(
            gru.input_size,
            gru.hidden_size,
            num_layers=gru.num_layers,
            batch_first=True,
            bidirectional=gru.bidirectional,
            dropout=gru.dropout,
        )
        plain.load_state_dict(gru.state_dict())
        plain.qconfig = per_channel_dynamic_qconfig  # what from_float reads
        return cls(quantized.GRU.from_float(plain).eval())

    def forward(self, x: Tensor, h0: Tensor | None = None, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Outputs [B, T, D*H] (zeros past each length) and final states [L*D, B, H]."""
        if lengths is None:
            return self.gru(x, h0)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, final = self.gru(packed, h0)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
        return outputs, final
