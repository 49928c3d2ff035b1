"""seq2seq: a GRU encoder-decoder for machine translation with pluggable attention."""

__version__ = "0.1.0"
