"""`lipo.config.load_config` with `section`: one top-level key of a larger YAML file is the config."""

from __future__ import annotations

import pytest

from lipo.config import Strict, load_config
from lipo.errors import ConfigError


class Inner(Strict):
    lr: float = 0.1


class Small(Strict):
    name: str = "x"
    inner: Inner = Inner()


def test_section_is_the_config_and_overrides_apply_inside_it(tmp_path):
    f = tmp_path / "pipeline.yaml"
    f.write_text("other: {anything: 1}\nserve:\n  name: mine\n  inner: {lr: 0.5}\nlist: [1, 2]\n")
    cfg = load_config(Small, f, ["inner.lr=2e-3"], section="serve")
    assert cfg == Small(name="mine", inner=Inner(lr=2e-3))
    with pytest.raises(ConfigError, match=rf"invalid config {f} \[serve\]: inner.bogus: unknown key"):
        load_config(Small, f, ["inner.bogus=1"], section="serve")
    with pytest.raises(ConfigError, match=rf"config file {f} has no `missing` section"):
        load_config(Small, f, section="missing")
    with pytest.raises(ConfigError, match=rf"config file {f}: section `list` must be a mapping"):
        load_config(Small, f, section="list")
    with pytest.raises(ConfigError, match="section `serve` needs a config file"):
        load_config(Small, None, section="serve")
    with pytest.raises(ConfigError, match="unknown key"):  # without `section`, the other keys are errors
        load_config(Small, f)
