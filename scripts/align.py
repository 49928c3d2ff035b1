#!/usr/bin/env python3
"""The same as `seq2seq align ...`."""

from _wrapper import run

run("align")
