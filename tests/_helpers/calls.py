"""What a module's functions call, read from its source (the one-driver tests)."""

from __future__ import annotations

import ast
import importlib
import inspect


def calls(module: str) -> dict[str, set[str]]:
    """Function -> the names it calls, for every function of ``module``."""
    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    out: dict[str, set[str]] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            out[fn.name] = {
                n.func.id if isinstance(n.func, ast.Name) else n.func.attr
                for n in ast.walk(fn)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name | ast.Attribute)
            }
    return out
