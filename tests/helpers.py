"""Flags shared by the tests that train: a model small enough to train in seconds on a CPU."""

TINY_MODEL = [
    "--seq-length",
    "64",
    "--horizon",
    "8",
    "--patch-len",
    "8",
    "--embed-size",
    "16",
    "--nhead",
    "4",
    "--dim-feedforward",
    "32",
    "--no-progress",
]
