"""The method registry.

A method is a class decorated with ``@register_method("name")``. The built-in methods live in
this package; a package outside this repository adds its own through the entry-point group
``distill_bench.methods`` (in its ``pyproject.toml``)::

    [project.entry-points."distill_bench.methods"]
    my-method = "my_package.method:MyMethod"

and ``bench list`` / ``bench run`` / ``bench check`` see it once it is pip-installed; see
``examples/custom-method``. An entry point may name the class (registered under the entry point's
name unless it registered itself) or a module whose classes register themselves.

The registry is the process's one table of names (module state, as ``logging`` keeps its
loggers); it is filled on first use, built-in modules first, then entry points, so importing
``methods.base`` never imports every method.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
from typing import Callable, Iterator

from methods.base import Method

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "distill_bench.methods"
#: the built-in methods, in the order `bench list` shows them
BUILTIN_MODULES = ("methods.ddim", "methods.dpmpp", "methods.er_sde", "methods.lcm", "methods.mcm", "methods.scott",
                   "methods.splam", "methods.pndm", "methods.dmd")


class MethodRegistry:
    """Names to method classes; see the module docstring."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Method]] = {}
        self._loaded = False
        self._plugin_errors: dict[str, str] = {}     # entry point -> why it did not load

    def register(self, name: str) -> Callable[[type[Method]], type[Method]]:
        """The class decorator: ``cls.name = name`` and ``name`` -> ``cls``."""
        def decorate(cls: type[Method]) -> type[Method]:
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise TypeError(f"@register_method({name!r}) decorates a methods.base.Method subclass, not {cls!r}")
            known = self._classes.get(name)
            if known is not None and known is not cls:
                raise ValueError(f"method name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
                                 f"{cls.__module__}.{cls.__qualname__} needs another name")
            cls.name = name
            self._classes[name] = cls
            return cls
        return decorate

    def unregister(self, name: str) -> None:
        """Forget ``name`` (and why its plugin failed to load, if it did)."""
        self._classes.pop(name, None)
        self._plugin_errors.pop(name, None)

    @contextlib.contextmanager
    def temporarily(self, name: str, cls: type[Method]) -> Iterator[type[Method]]:
        """``cls`` registered as ``name`` inside the block only (tests)."""
        self._load()
        self.register(name)(cls)
        try:
            yield cls
        finally:
            self.unregister(name)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        self.load_plugins()

    def load_plugins(self) -> list[str]:
        """Load the ``distill_bench.methods`` entry points not loaded yet; returns their names.
        A plugin that fails to load is logged and remembered (``get`` names it), not raised: it
        must not take the other methods down."""
        loaded_names = []
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name in self._classes or entry.name in self._plugin_errors:
                continue
            loaded_names.append(entry.name)
            try:
                loaded = entry.load()
            except Exception as err:        # a broken plugin must not take the built-in methods down
                where = f"{entry.value}" + (f" from package {entry.dist.name}" if entry.dist else "")
                self._plugin_errors[entry.name] = f"{where}: {type(err).__name__}: {err}"
                log.warning("method plugin %s (%s) failed to load: %s", entry.name, where, err)
                continue
            if isinstance(loaded, type) and issubclass(loaded, Method) and loaded not in self._classes.values():
                self.register(entry.name)(loaded)
        return loaded_names

    def names(self) -> list[str]:
        """Built-in methods in BUILTIN_MODULES order (whatever imported them first), then plugins."""
        self._load()
        rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
        order = list(self._classes)
        return sorted(order, key=lambda n: (rank.get(self._classes[n].__module__, len(rank)), order.index(n)))

    def get(self, name: str) -> type[Method]:
        """The class registered as ``name``; KeyError with the known names (and any plugin that
        failed to load) otherwise."""
        self._load()
        if name in self._classes:
            return self._classes[name]
        failed = "".join(f"; plugin {n} failed to load ({why})" for n, why in self._plugin_errors.items())
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(self._classes)}{failed}")


REGISTRY = MethodRegistry()


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Register a method class under ``name`` (``@register_method("lcm")``)."""
    return REGISTRY.register(name)


def method_names() -> list[str]:
    return REGISTRY.names()


def get_method_class(name: str) -> type[Method]:
    """The registered class called ``name``; KeyError with the known names otherwise."""
    return REGISTRY.get(name)


__all__ = ["ENTRY_POINT_GROUP", "MethodRegistry", "REGISTRY", "register_method", "method_names", "get_method_class"]
