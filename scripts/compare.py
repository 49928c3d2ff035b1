#!/usr/bin/env python3
"""The same as `seq2seq compare ...`."""

from _wrapper import run

run("compare")
