import os

import torch

# Parity is measured in float32 on 2 CPU threads; keep both frameworks deterministic.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.manual_seed(0)

