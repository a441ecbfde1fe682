"""A new deployable method is one module plus one line in ``fedsc.deploy.drivers.DEPLOYED``.

The site finds the new method's steps through the registry (``load_method_steps``), with no
edit to ``fedsc/deploy/site.py``: the site names no method.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fedsc.deploy import drivers, site

TOY_MODULE = "fedsc_toy_deployable"
TOY_SOURCE = '''
"""A toy deployable method: one site step."""
from fedsc.deploy.site import register_step


@register_step("toy/ping", public=True)
def ping(site, params, arrays):
    return {"pong": params["x"] + 1}
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """``toy`` registered in DEPLOYED, its module importable; all of it undone afterwards."""
    (tmp_path / f"{TOY_MODULE}.py").write_text(TOY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    drivers.DEPLOYED.register("toy", TOY_MODULE)
    yield "toy"
    drivers.DEPLOYED.unregister("toy")
    site.STEPS.pop("toy/ping", None)
    site.PUBLIC_STEPS.discard("toy/ping")
    sys.modules.pop(TOY_MODULE, None)


def test_a_site_runs_a_new_methods_step_found_through_the_registry(toy_method, tmp_path):
    assert drivers.check_deployed_method(toy_method) == "toy"
    assert "toy/ping" not in site.STEPS  # nothing imported the module yet
    a_site = site.Site(tmp_path / "unused.h5ad", name="a")
    assert a_site.run("toy/ping", {"x": 41}, {}) == {"pong": 42}
    assert TOY_MODULE in sys.modules


def test_an_unknown_step_still_names_the_known_ones(tmp_path):
    a_site = site.Site(tmp_path / "unused.h5ad", name="a")
    with pytest.raises(Exception, match="unknown site step 'nope/step'"):
        a_site.run("nope/step", {}, {"x": np.zeros(1)})
