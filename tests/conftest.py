"""Shared pytest set-up: one torch thread per test process (the suite runs with `-n 2` on 2 cores)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
