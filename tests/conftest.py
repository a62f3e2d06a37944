"""Test-wide settings: CPU threads capped so the suite behaves on a 2-core machine."""

import os

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
