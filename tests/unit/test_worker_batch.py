"""`lookalike worker --batch N` and its default (issue 16): 1 on CPU, 32 on CUDA, an explicit value kept."""
from __future__ import annotations

import torch

from lookalike.cli import build_parser
from shared.config import load_settings
from workers.batch import default_batch


def test_the_worker_takes_a_batch_flag():
    assert build_parser().parse_args(["worker", "--batch", "32"]).batch == 32
    assert build_parser().parse_args(["worker"]).batch is None  # LOOKALIKE_WORKER_BATCH then decides


def test_default_batch_is_one_on_cpu_and_an_explicit_value_wins():
    assert default_batch(load_settings({"LOOKALIKE_WORKER_BATCH": "8"})) == 8
    assert default_batch(load_settings({})) == (32 if torch.cuda.is_available() else 1)
