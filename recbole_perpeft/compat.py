"""Compatibility fixes that let RecBole 1.2.1 run on today's Python stack.

RecBole 1.2.1 (2025-02) was written against numpy 1, torch < 2.6 and pandas 1/2.
Each fix below is small, idempotent and applied once by :func:`apply`, which the
package calls on import. Nothing here changes RecBole's numbers.

What breaks, and what this module does about it:

- numpy 2 removed the aliases ``np.float``, ``np.int``, ``np.bool``, ``np.bool8``,
  ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.long`` that RecBole and
  the ray release it pins still use. They are restored as the builtins or numpy
  types they always stood for.
- torch 2.6 made ``torch.load`` default to ``weights_only=True``. RecBole's trainer
  pickles its ``Config`` object into every checkpoint and reloads the best one
  before testing, which then fails. The ``torch`` seen by RecBole's trainer and
  quick start modules is given a ``load`` that defaults to ``weights_only=False``
  for those files, which RecBole wrote itself; the global ``torch.load`` keeps
  the safe default for everyone else.
- ray 2.6 (the newest that RecBole 1.2.1 accepts) imports ``pkg_resources``, which
  setuptools removed in release 81. That one is fixed by a pin,
  ``setuptools<81``, in ``setup.cfg``; this module only silences the
  deprecation warning that importing it prints.
- pandas 3 changed semantics RecBole's dataset code relies on: chained in-place
  updates (``df[col].fillna(..., inplace=True)``) silently do nothing under
  copy-on-write, and ``Series.agg(len)`` over a column of arrays returns the
  column's length instead of one length per row. Patching each call site would
  be fragile and silent when wrong, so ``setup.cfg`` pins ``pandas<3``.
"""

from __future__ import annotations

import functools
import types
import warnings

import numpy as np

_NUMPY_ALIASES = {
    "float": float,
    "int": int,
    "bool": bool,
    "long": int,
    "bool8": np.bool_,
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "string_": np.bytes_,
}

_applied = False


def restore_numpy_aliases() -> list[str]:
    """Put back the numpy 1 aliases that numpy 2 removed.

    Returns:
        list[str]: the names that were missing and have been restored.
    """
    restored = []
    for name, target in _NUMPY_ALIASES.items():
        try:
            getattr(np, name)
        except AttributeError:
            setattr(np, name, target)
            restored.append(name)
    return restored


def _load_trusted(original_load, *args, **kwargs):
    kwargs.setdefault("weights_only", False)
    return original_load(*args, **kwargs)


def trusted_torch(torch_module: types.ModuleType) -> types.ModuleType:
    """A stand-in for ``torch`` whose ``load`` defaults to ``weights_only=False``.

    Every other attribute is the real torch's. Only modules that load checkpoints
    they wrote themselves are given it.
    """
    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch_module.__dict__)
    proxy.load = functools.partial(_load_trusted, torch_module.load)
    proxy.__perpeft_trusted__ = True
    return proxy


def patch_recbole_checkpoint_loading() -> None:
    """Let RecBole reload the checkpoints it saved, under torch >= 2.6."""
    import importlib

    import torch

    for module_name in ("recbole.trainer.trainer", "recbole.quick_start.quick_start"):
        module = importlib.import_module(module_name)
        current = getattr(module, "torch", None)
        if current is not None and not getattr(current, "__perpeft_trusted__", False):
            module.torch = trusted_torch(torch)


def apply() -> None:
    """Apply every fix once. Safe to call many times."""
    global _applied
    if _applied:
        return
    restore_numpy_aliases()
    warnings.filterwarnings(
        "ignore", message="pkg_resources is deprecated", category=UserWarning
    )
    # RecBole 1.2.1's own FutureWarnings (chained fillna, torch.cuda.amp) say
    # nothing a user of this package can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    warnings.filterwarnings(
        "ignore", message="Deprecated call to `pkg_resources", category=DeprecationWarning
    )
    patch_recbole_checkpoint_loading()
    _applied = True
