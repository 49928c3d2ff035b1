"""The decoder: a GRU whose output attends over the encoder states (Luong-style).

At step t the GRU reads the previous target embedding (and, with input feeding, the previous
attentional vector), its state h_t queries the attention, and the attentional vector
    a_t = tanh(W_c [h_t; c_t])
predicts the next piece. Without input feeding nothing feeds back except the GRU state, so
training runs the GRU over the whole target at once and attends for all steps in one batched
call: the fast path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from seq2seq.attention import Attention
from seq2seq.gru import GRU
from seq2seq.tokenizer import PAD_ID


class Memory(NamedTuple):
    """What the decoder attends over: precomputed keys, values [B, Ts, Hk], mask [B, Ts]."""

    keys: Tensor
    values: Tensor
    mask: Tensor

    def select(self, index: Tensor) -> Memory:
        """Rows `index` of the batch (for beam search)."""
        return Memory(self.keys[index], self.values[index], self.mask[index])


class DecoderState(NamedTuple):
    """GRU state [L, B, H] and the last attentional vector [B, 1, H] (used by input feeding)."""

    hidden: Tensor
    attentional: Tensor

    def select(self, index: Tensor) -> DecoderState:
        """Rows `index` of the batch (for beam search)."""
        return DecoderState(self.hidden[:, index], self.attentional[index])


class Decoder(nn.Module):
    """GRU decoder with attention, optional input feeding and optional tied output embeddings."""

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int,
        hidden_size: int,
        layers: int,
        dropout: float,
        key_size: int,
        attention: Attention,
        input_feeding: bool,
        tie_embeddings: bool,
    ):
        super().__init__()
        self.layers, self.hidden_size, self.input_feeding = layers, hidden_size, input_feeding
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.bridge = nn.Linear(key_size, layers * hidden_size)
        rnn_input = embedding_size + (hidden_size if input_feeding else 0)
        self.rnn = GRU(rnn_input, hidden_size, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.attention = attention
        self.combine = nn.Linear(hidden_size + key_size, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)
        if tie_embeddings:
            self.output.weight = self.embedding.weight

    def init_state(self, summary: Tensor) -> DecoderState:
        """Initial state from the encoder summary [B, Hk] through the bridge."""
        batch = summary.size(0)
        hidden = torch.tanh(self.bridge(summary)).view(batch, self.layers, self.hidden_size)
        attentional = summary.new_zeros(batch, 1, self.hidden_size)
        return DecoderState(hidden.transpose(0, 1).contiguous(), attentional)

    def make_memory(self, states: Tensor, mask: Tensor) -> Memory:
        """Attention memory for encoder states [B, Ts, Hk]; source-only projections happen here, once."""
        return Memory(self.attention.precompute(states), states, mask)

    def forward(self, tgt_in: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor]:
        """Attentional vectors [B, T, H], the new state, attention weights [B, T, Ts]."""
        embedded = self.dropout(self.embedding(tgt_in))  # [B, T, E]
        if not self.input_feeding:
            outputs, hidden = self.rnn(embedded, state.hidden)  # [B, T, H]: all steps at once
            attentional, weights = self._attend(outputs, memory)
            return attentional, DecoderState(hidden, attentional[:, -1:]), weights
        steps, all_weights = [], []
        for t in range(tgt_in.size(1)):  # input feeding: each step needs the previous one's output
            rnn_input = torch.cat([embedded[:, t : t + 1], state.attentional], dim=-1)
            output, hidden = self.rnn(rnn_input, state.hidden)  # [B, 1, H]
            attentional, weights = self._attend(output, memory)
            state = DecoderState(hidden, attentional)
            steps.append(attentional)
            all_weights.append(weights)
        return torch.cat(steps, dim=1), state, torch.cat(all_weights, dim=1)

    def _attend(self, outputs: Tensor, memory: Memory) -> tuple[Tensor, Tensor]:
        context, weights = self.attention(outputs, memory.keys, memory.values, memory.mask)  # [B, T, Hk]
        attentional = torch.tanh(self.combine(torch.cat([outputs, context], dim=-1)))  # [B, T, H]
        return self.dropout(attentional), weights

    def logits(self, attentional: Tensor) -> Tensor:
        """Scores over the target vocabulary for attentional vectors [..., H] -> [..., V]."""
        return self.output(attentional)
