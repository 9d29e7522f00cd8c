"""Shared test set-up: the repository root on sys.path, and few threads so tests stay quick on 2 cores."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(2)
