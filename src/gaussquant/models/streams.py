"""Common random numbers across methods: the random draws that initialise a model, split into
named streams so that what one method builds differently does not shift what the others share.

For a training seed, every method then starts from the same backbone weights except the layers
whose shape depends on its bottleneck (the encoder's output and the decoder's input layer), and
the global generator is left where the seed put it, so the sampling noise of training is the same
too. Paired comparisons over seeds (docs/method.md §7) then lose this shared noise.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def own_stream(name: str) -> Iterator[None]:
    """Draw torch's CPU random numbers inside the block from a stream of their own, seeded by
    the current seed (:func:`torch.initial_seed`) and ``name``; the stream outside is left as it
    was, as if the block drew nothing. Deterministic for a given seed."""
    seed = zlib.crc32(f"{torch.initial_seed()}/{name}".encode())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
