#!/usr/bin/env python3
"""The same as `seq2seq train ...`."""

from _wrapper import run

run("train")
