"""Run `python -m seq2seq ...` with cuDNN switched off, for the benchmark's GPU mode.

    python scripts/bench/without_cudnn.py train config.yaml --force

On a GPU, seq2seq's GRU hands its recurrence to `nn.GRU`, i.e. to cuDNN's fused kernels. With
`torch.backends.cudnn.enabled = False` PyTorch runs its own CUDA GRU kernels instead: the benchmark
measures both, to show what cuDNN is worth for this model.
"""

import runpy
import sys

import torch

if __name__ == "__main__":
    torch.backends.cudnn.enabled = False
    sys.argv = ["seq2seq", *sys.argv[1:]]
    runpy.run_module("seq2seq", run_name="__main__", alter_sys=True)
