"""The encoder: embeddings and a bidirectional GRU that stops at each sentence's end."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.gru import GRU
from seq2seq.tokenizer import PAD_ID


class Encoder(nn.Module):
    """Bi-GRU encoder: source ids [B, S] -> states [B, S, 2H] and a summary [B, 2H]."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.rnn = GRU(
            embedding_size, hidden_size, num_layers=layers, bidirectional=True, dropout=dropout if layers > 1 else 0.0
        )
        self.output_size = 2 * hidden_size

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """States [B, S, 2H] (zeros on padding) and the last layer's final states [B, 2H]."""
        embedded = self.dropout(self.embedding(src))  # [B, S, E]
        states, final = self.rnn(embedded, None, src_lengths)  # [B, S, 2H]; final: [layers * 2, B, H]
        summary = torch.cat([final[-2], final[-1]], dim=-1)  # forward and backward, last layer
        return self.dropout(states), summary
