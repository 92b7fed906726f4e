"""``NoHostReads``: a context in which every tensor → host read raises (for the device-side skip paths).

A plain module (not conftest) so several test files can import it."""

from __future__ import annotations

import torch


class NoHostReads:
    """Makes every tensor → host read raise while active (the device path must not need one)."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        def refuse(*args, **kwargs):
            raise AssertionError("host read inside the device-side skip-step path")

        for n in self.NAMES:
            setattr(torch.Tensor, n, refuse)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)
