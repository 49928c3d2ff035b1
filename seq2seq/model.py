"""The encoder-decoder, built from the model section of a config."""

from __future__ import annotations

from torch import Tensor, nn

from seq2seq.attention import build_attention
from seq2seq.config import ModelConfig
from seq2seq.decoder import Decoder, DecoderState, Memory
from seq2seq.encoder import Encoder


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

    def forward(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing: attentional vectors [B, T, H] and attention weights [B, T, S].

        Apply `self.decoder.logits` to the positions you need (training skips padding).
        """
        memory, state = self.encode(src, src_lengths, src_mask)
        attentional, _, weights = self.decoder(tgt_in, state, memory)
        return attentional, weights


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
