"""Batch-correction methods and the registry that maps a method's name to its spec.

Adding a method is one module with its config dataclass and run function, plus one line::

    fedsc.methods.register(MethodSpec(name="mine", config=MineConfig, input="embedding",
                                      run=run_mine))

The CLI (``fedsc run mine``), run configs, studies, the runner and ``fedsc.tl.mine``
then know it; see :class:`~fedsc.methods.spec.MethodSpec` for what a spec declares.
"""

from __future__ import annotations

from fedsc.methods import spec_fedscgen, spec_scbatchprox, spec_scgen
from fedsc.methods.spec import INPUT_KINDS, MethodSpec, RunInputs, config_from_kwargs
from fedsc.registry import Registry

__all__ = [
    "INPUT_KINDS",
    "REGISTRY",
    "MethodSpec",
    "RunInputs",
    "config_from_kwargs",
    "get_method",
    "method_names",
    "register",
    "unregister",
]

#: Registered methods by name.
REGISTRY: Registry[MethodSpec] = Registry("method")


def register(spec: MethodSpec) -> MethodSpec:
    """Register a method; a name already registered raises :class:`ValueError`."""
    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register() takes a MethodSpec, got {type(spec).__name__}.")
    return REGISTRY.register(spec.name, spec)


def unregister(name: str) -> MethodSpec:
    """Remove the method ``name`` from the registry and return its spec."""
    return REGISTRY.unregister(name)


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name`` (a clear error listing the choices if none)."""
    return REGISTRY.get(name)


def method_names() -> list[str]:
    """Names of the registered methods, in registration order."""
    return REGISTRY.names()


for _spec in (spec_scbatchprox.SPEC, spec_fedscgen.SPEC, spec_scgen.SPEC):
    register(_spec)
