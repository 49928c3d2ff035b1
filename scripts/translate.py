#!/usr/bin/env python3
"""The same as `seq2seq translate ...`."""

from _wrapper import run

run("translate")
