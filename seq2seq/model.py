"""The encoder-decoder, built from the model section of a config, and its training loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.attention import build_attention
from seq2seq.config import ModelConfig
from seq2seq.decoder import Decoder, DecoderState, Memory
from seq2seq.encoder import Encoder
from seq2seq.tokenizer import PAD_ID

if TYPE_CHECKING:
    from seq2seq.data import Batch


class Seq2Seq(nn.Module):
    """Bi-GRU encoder + attentional GRU decoder."""

    def __init__(self, config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.encoder = Encoder(
            src_vocab_size, config.embedding_size, config.encoder_hidden_size, config.encoder_layers, config.dropout
        )
        key_size = self.encoder.output_size
        attention = build_attention(
            config.attention.type, config.attention.options, config.decoder_hidden_size, key_size
        )
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

    def forward(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_mask: Tensor) -> Tensor:
        """Teacher forcing: the logits [N, V] of the N target positions that `tgt_mask` [B, T] marks.

        Only real positions reach the output layer, so padding costs nothing there.
        """
        memory, state = self.encode(src, src_lengths, src_mask)
        attentional, _, _ = self.decoder(tgt_in, state, memory)  # [B, T, H]
        return self.decoder.logits(attentional[tgt_mask])

    def attend(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: the attention weights [B, T, S] of every target position (for alignments)."""
        memory, state = self.encode(src, src_lengths, src_mask)
        _, _, weights = self.decoder(tgt_in, state, memory)
        return weights


def sequence_loss(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy per target token under teacher forcing (padding skipped).

    `model` is a Seq2Seq or its DistributedDataParallel wrapper.
    """
    tgt_mask = batch.tgt_out != PAD_ID  # [B, T]
    logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, tgt_mask)  # [N, V]
    return F.cross_entropy(logits.float(), batch.tgt_out[tgt_mask], label_smoothing=label_smoothing)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
