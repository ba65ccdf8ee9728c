"""User-facing errors.

A `LungclsError` is a problem with the user's input (a config value, a folder, an image), not a bug.
Entry points print it as one line that names the problem and the fix, without a traceback.
"""

from __future__ import annotations


class LungclsError(Exception):
    """Bad input or configuration; the message says what is wrong and how to fix it."""


# optional parts of lungcls and the extra that installs each (pyproject.toml's optional-dependencies)
EXTRAS = {
    "serve": "the web service (lungcls-serve)",
    "export": "ONNX export (lungcls-export export.format=onnx)",
    "sweeps": "Optuna sweeps and SLURM launching (hparams_search=optuna, hydra/launcher=slurm)",
    "bench": "the faiss comparison of lungcls-bench --near-duplicates (--faiss-codes 0 skips it)",
}


def require_extra(modules: tuple[str, ...] | str, extra: str) -> None:
    """A one-line ``LungclsError`` naming the pip command, when a module of an optional part is missing."""
    import importlib.util

    for module in (modules,) if isinstance(modules, str) else modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise LungclsError(f"{EXTRAS[extra]} needs the '{module}' package, which the core install leaves out; "
                               f'pip install "lungcls[{extra}]" (or "lungcls[all]")')
