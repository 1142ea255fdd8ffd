"""Config loading/validation and the decorator registry."""
import pytest

from moodcat_plugin.config import Config, merge, parse_override, select_profile
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import POSTPROCESSORS, TRAINERS, Registry, UnknownNameError


def test_unknown_override_key_names_closest_valid_key(make_config):
    with pytest.raises(ConfigError, match="unknown config key 'num_epoch'.*Did you mean 'num_epochs'"):
        make_config(["msp"], "trainer.num_epoch=3")


def test_unknown_top_level_key(make_config):
    with pytest.raises(ConfigError, match="Did you mean 'eval_batch_size'"):
        make_config(["msp"], "eval_batchsize=3")


def test_override_is_applied_and_typed(make_config):
    cfg = make_config(["odin"], "trainer.num_epochs=7", "postprocessors.odin.postprocessor.APS_mode=false")
    assert cfg.trainer.num_epochs == 7
    assert cfg.postprocessors.odin.postprocessor.APS_mode is False


def test_profiles_overlay_and_missing_profile():
    data = {"a": 1, "b": {"c": 2}, "profiles": {"tiny": {"b": {"c": 5}}}}
    assert select_profile(data, "tiny") == {"a": 1, "b": {"c": 5}}
    with pytest.raises(ConfigError, match="no profile 'gpu'"):
        select_profile(data, "gpu")


def test_unknown_benchmark_and_method(make_config):
    with pytest.raises(ConfigError, match="Did you mean: cifar10"):
        make_config(["msp"], benchmark="cifar1O")
    with pytest.raises(ConfigError, match="Did you mean: odin"):
        make_config(["odn"])


def test_parse_override_and_merge():
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        parse_override("novalue")
    assert merge({"x": {"y": 1}}, {"x": {"y": 2}}) == {"x": {"y": 2}}


def test_config_attribute_access():
    cfg = Config({"a": {"b": 1}})
    assert cfg.a.b == 1
    with pytest.raises(AttributeError, match="Did you mean 'a'"):
        cfg.aa


def test_registry_lookup_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean: odin"):
        POSTPROCESSORS.get("odim")
    assert {"msp", "odin", "ebo"} <= set(POSTPROCESSORS.names())
    assert "base" in TRAINERS.names()


def test_registry_rejects_duplicate_names():
    registry = Registry("thing")

    @registry.register("a")
    class A:
        pass

    with pytest.raises(ValueError, match="registered twice"):
        @registry.register("a")
        class B:
            pass


def test_entry_point_plugins_are_loaded(monkeypatch):
    """A third-party package registers a method through the entry-point group alone. Everything it
    changes is restored by monkeypatch even when an assertion fails (no method left registered)."""
    from importlib import metadata

    import moodcat_plugin.registry as registry

    def _register():
        @registry.register_postprocessor("third_party_msp")
        class ThirdParty(registry.POSTPROCESSORS.get("msp")):
            pass

    registry.POSTPROCESSORS.names()  # our own entries loaded first, into the table restored below
    monkeypatch.setattr(registry.POSTPROCESSORS, "_entries", dict(registry.POSTPROCESSORS._entries))

    class FakeEntryPoint:
        name, value = "fake", "fake_third_party_plugin"

        def load(self):
            _register()

    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_loaded", False)
    assert "third_party_msp" in registry.POSTPROCESSORS.names()


def test_method_file_extends_another(make_config):
    cfg = make_config(["moodcat_ext"], profile="demo")
    section = cfg.postprocessors.moodcat_ext
    assert section.postprocessor.postprocessor_args.cb_variants == ["cb", "cb_ext"]
    assert section.gan.name == "moodcat_gan"          # inherited from moodcat.yml
    assert section.postprocessor.postprocessor_args.scorers == ["cb"]  # moodcat.yml's demo profile


def test_setting_a_method_that_is_not_run_is_an_error(make_config):
    with pytest.raises(ConfigError, match="'odin' is not among the methods run"):
        make_config(["msp"], "postprocessors.odin.postprocessor.APS_mode=false")


def test_registry_build_passes_the_section_and_extras():
    """``build(section, **extra)``: the class ``name`` names, called with the other keys except
    ``checkpoint`` (where weights come from), plus the extras."""
    registry = Registry("thing")

    @registry.register("pair")
    class Pair:
        def __init__(self, width, num_classes):
            self.width, self.num_classes = width, num_classes

    built = registry.build({"name": "pair", "width": 2, "checkpoint": "x.pt"}, num_classes=6)
    assert isinstance(built, Pair) and (built.width, built.num_classes) == (2, 6)
