"""User-facing errors.

A `LungclsError` is a problem with the user's input (a config value, a folder, an image), not a bug.
Entry points print it as one line that names the problem and the fix, without a traceback.
"""

from __future__ import annotations


class LungclsError(Exception):
    """Bad input or configuration; the message says what is wrong and how to fix it."""
