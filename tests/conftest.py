import os

import pytest
import torch

# Parity is measured in float32 on 2 CPU threads; keep both frameworks deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.manual_seed(0)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: full-size SVD-XT tests (minutes, ~15 GB RAM); run by make test-slow")
