"""Modules that are also callable as the public function of the same name.

`adaptertune.train` and `adaptertune.analysis.spectrum` / `.significance` are both a submodule and a
public function: once a submodule is imported, Python binds its name on the package to the module, so
`at.train(...)` or `at.analysis.spectrum(frozen, adapted)` would find a module. `callable_module` lets
such a module forward calls to its function.
"""

from __future__ import annotations

import importlib
import sys
import types


def callable_module(name: str, target: str) -> None:
    """Let the (imported) module `name` be called as the function `target` ("package.module:function")."""
    module_name, func = target.split(":")

    class _Callable(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_name), func)(*args, **kwargs)

    sys.modules[name].__class__ = _Callable
