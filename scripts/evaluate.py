#!/usr/bin/env python3
"""The same as `seq2seq evaluate ...`."""

from _wrapper import run

run("evaluate")
