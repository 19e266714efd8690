"""Counting the device->host synchronisations of a CUDA run (shared by the CUDA tests)."""

import warnings

import torch


def count_syncs(run):
    """``(run(), number of synchronising calls it made)``, via torch's sync debug mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return result, sum("synchroniz" in str(w.message).lower() for w in caught)
