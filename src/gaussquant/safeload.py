"""Reading pickled files without running code: every ``torch.load`` of the project goes here.

``torch.load(weights_only=True)`` rebuilds tensors, containers and plain Python values only; a
pickle that asks for any other global (``os.system``, a class of some library) is refused
before anything is called. :func:`load_pickle` turns that refusal into a one-line
:class:`GaussquantError` naming the global. Callers allowlist the few extra globals their files
legitimately hold (:data:`ACCELERATE_GLOBALS`, :data:`gaussquant.official.LIGHTNING_GLOBALS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from gaussquant.errors import GaussquantError

# The weights-only unpickler's refusal names the global as "GLOBAL module.name".
_REFUSED = re.compile(r"GLOBAL ([\w.]+)")
_UNBUILT = re.compile(r"Can only build .* but got (<[^>]+>)")
# File kinds in an ``accelerator.save_state`` folder that are pickles (safetensors is not).
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


def accelerate_globals() -> list:
    """What Accelerate's own RNG-state and sampler files hold besides plain data (numpy arrays
    and dtypes, its ``encode`` helper), as Accelerate allowlists them itself."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    return list(TORCH_SAFE_GLOBALS)


def load_pickle(path: str | Path, what: str, allowed: Iterable = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with ``allowed`` extra globals.

    Raises a one-line :class:`GaussquantError` ("``what`` PATH ...") when the file cannot be read
    or asks for a global outside the allowlist; nothing from the file has run at that point.
    """
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated, foreign or hostile file
        raise GaussquantError(f"{what} {str(path)!r} {_reason(err)}") from None


def _reason(err: Exception) -> str:
    text = str(err)
    if refused := _REFUSED.search(text):
        return (
            f"was refused: its pickle asks for the Python global {refused[1]}, which is not a "
            "tensor or plain data (a checkpoint never needs it; loading it could run code)"
        )
    if unbuilt := _UNBUILT.search(text):
        return f"was refused: its pickle builds {unbuilt[1]}, not a tensor or plain data"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"cannot be read ({type(err).__name__}: {first[:200]})"


def check_pickles(folder: str | Path, what: str, allowed: Iterable = ()) -> None:
    """Refuse (one line) any pickle file in ``folder`` that holds more than ``allowed`` globals:
    run before a library that loads such files unrestricted (Accelerate's ``load_state``)."""
    allowed = list(allowed)
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in PICKLE_SUFFIXES:
            load_pickle(path, what, allowed)
