"""The encoder-decoder, built from the model section of a config."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor, nn

from seq2seq.attention import build_attention
from seq2seq.config import ModelConfig
from seq2seq.decoder import Decoder, DecoderState, Memory
from seq2seq.encoder import Encoder

if TYPE_CHECKING:
    from seq2seq.config import Config
    from seq2seq.tokenizer import Tokenizer


class Seq2Seq(nn.Module):
    """Bi-GRU encoder + attentional GRU decoder."""

    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.encoder = Encoder(
            src_vocab_size, config.embedding_size, config.encoder_hidden_size, config.encoder_layers, config.dropout
        )
        key_size = self.encoder.output_size
        attention = build_attention(config.attention, config.decoder_hidden_size, key_size)
        self.decoder = Decoder(
            tgt_vocab_size,
            config.embedding_size,
            config.decoder_hidden_size,
            config.decoder_layers,
            config.dropout,
            key_size,
            attention,
            config.input_feeding,
            config.tie_embeddings,
        )

    def encode(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> tuple[Memory, DecoderState]:
        """Encode source ids [B, S]: the attention memory and the decoder's initial state."""
        states, summary = self.encoder(src, src_lengths)
        return self.decoder.make_memory(states, src_mask), self.decoder.init_state(summary)

    def forward(
        self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing: attentional vectors [B, T, H] and attention weights [B, T, S].

        With `tgt_mask` [B, T], returns instead the logits [N, V] of the N positions it marks
        (training skips padding this way), and the weights.
        """
        memory, state = self.encode(src, src_lengths, src_mask)
        attentional, _, weights = self.decoder(tgt_in, state, memory)
        if tgt_mask is not None:
            return self.decoder.logits(attentional[tgt_mask]), weights
        return attentional, weights


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Trained(NamedTuple):
    """What inference needs from a checkpoint."""

    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config
    step: int | None


def load_trained(path, device="cpu") -> Trained:
    """A checkpoint's model (eval mode, on `device`), tokenizer, config and step, with one-line errors."""
    from seq2seq.checkpoint import load_checkpoint
    from seq2seq.config import config_from_dict
    from seq2seq.errors import UserError
    from seq2seq.tokenizer import Tokenizer

    payload = load_checkpoint(path, map_location=device)
    try:
        config = config_from_dict(payload["config"])
        tokenizer = Tokenizer.from_state_dict(payload["tokenizer"])
        model = Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, TypeError, UserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path} is not a complete seq2seq checkpoint ({reason})") from None
    return Trained(model.to(device).eval(), tokenizer, config, payload.get("step"))
