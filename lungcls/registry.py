"""Named registries: the one way a config value that names an implementation reaches its code.

Config groups whose choices are lungcls's own plug-ins (``backbone``, ``finetune``,
``dataset.layout``, ``dataset.normalization``) name an entry of a registry; groups that build
library objects (optimizer, scheduler, loss, augment, callbacks, logger, trainer) use Hydra's
``_target_``. Adding a plug-in is one decorated definition, like torchvision's
``register_model``::

    @BACKBONES.register("mynet", head="fc", ...)
    def mynet() -> nn.Module: ...

An unknown name is a one-line ``LungclsError`` that lists the registered names and the override
to use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lungcls.errors import LungclsError

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> entry``, filled by decorators at import time and looked up by config values."""

    def __init__(self, kind: str, config_key: str):
        self.kind = kind  # what an entry is, for messages ("backbone")
        self.config_key = config_key  # where users choose it ("backbone=<name>")
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str | None = None, **fields) -> Callable:
        """Decorator: registers ``self.wrap(name, obj, **fields)`` (by default ``obj`` itself; the
        backbone registry turns a builder function and its fields into a ``BackboneSpec``)."""

        def decorate(obj):
            key = name or getattr(obj, "name", None) or obj.__name__
            self.add(key, self.wrap(key, obj, **fields))
            return obj

        return decorate

    def wrap(self, name: str, obj, **fields) -> T:
        """The entry for a decorated object; registries that build specs from ``fields`` override it."""
        if fields:
            raise TypeError(f"{self.kind} registry takes no fields, got {sorted(fields)}")
        return obj

    def get(self, name: object) -> T:
        try:
            return self._entries[str(name)]
        except KeyError:
            raise LungclsError(
                f"unknown {self.kind} '{name}'; choose one of {', '.join(self.names())} ({self.config_key})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return str(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
