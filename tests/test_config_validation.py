"""Config values are checked at load (types, ranges, unknown keys), before any data loading or
training, with one-line errors; numbers are read as people write them (issue 9, "Validation")."""
import shutil
from pathlib import Path

import pytest

from moodcat_plugin.cli import main
from moodcat_plugin.config import parse_override, parse_yaml
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.pipeline import available, build_config, default_config_root, method_config
from moodcat_plugin.postprocessors import BasePostprocessor, MoodcatPostprocessor
from moodcat_plugin.registry import POSTPROCESSORS, register_postprocessor
from moodcat_plugin.schema import Schema, number


def run_cli(tmp_path, capsys, *args, methods=("msp",)):
    """main() on the demo at the tiny profile; returns (exit code, stderr lines, output folder)."""
    out = tmp_path / "out"
    code = main(["--postprocessor", *methods, "--profile", "tiny", "--device", "cpu", "--output-dir", str(out),
                 "--no-progress", *args])
    return code, capsys.readouterr().err.strip().splitlines(), out


def assert_refused_before_any_work(code, err_lines, out, message):
    assert code == 2
    assert err_lines == [f"error: {message}"]   # one line, no traceback
    assert not out.exists()                      # nothing loaded, trained or written


# -- the hostile tester's --set values ------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--set", "eval_batch_size=abc"], "config key 'eval_batch_size' must be an integer >= 1, got 'abc'"),
    (["--set", "eval_batch_size=0"], "config key 'eval_batch_size' must be an integer >= 1, got 0"),
    (["--set", "trainer.num_epochs=abc"], "config key 'trainer.num_epochs' must be an integer >= 1, got 'abc'"),
    (["--set", "trainer.num_epochs=0"], "config key 'trainer.num_epochs' must be an integer >= 1, got 0"),
    (["--set", "trainer.lr=abc"], "config key 'trainer.lr' must be a number > 0, got 'abc'"),
    (["--set", "seed=abc"], "config key 'seed' must be an integer in [0, 4294967295], got 'abc'"),
    (["--seed", "-1"], "config key 'seed' must be an integer in [0, 4294967295], got -1"),
    (["--seed", "4294967296"], "config key 'seed' must be an integer in [0, 4294967295], got 4294967296"),
    (["--set", "trainer.num_epochs=[1"], "override 'trainer.num_epochs=[1': the value is not valid YAML at line 1, "
     "column 3: expected ',' or ']', but got '<stream end>'; quote it or fix the brackets (lists: [1, 2])"),
    (["--set", "trainer=5"], "config key 'trainer' must be a section (a mapping of keys), got 5"),
    (["--set", "dataset.normalization.mean=[0.5]"],
     "config key 'dataset.normalization.mean' must be a list of 3 numbers (one per RGB channel), got [0.5]"),
    (["--set", "dataset.normalization.std=[0.3, 0, 0.3]"],
     "config key 'dataset.normalization.std' must be a list of 3 numbers > 0 (one per RGB channel), got [0.3, 0, 0.3]"),
])
def test_bad_values_fail_at_load_with_one_line(tmp_path, capsys, args, message):
    assert_refused_before_any_work(*run_cli(tmp_path, capsys, *args), message)


def test_trainer_of_a_training_method_is_checked_too(tmp_path, capsys):
    code, err, out = run_cli(tmp_path, capsys, "--set", "postprocessors.oe.trainer.num_epochs=0", methods=("oe",))
    assert_refused_before_any_work(code, err, out,
                                   "config key 'postprocessors.oe.trainer.num_epochs' must be an integer >= 1, got 0")


# -- typos inside method files -------------------------------------------------------------------------
def config_root_with(tmp_path, relative: str, old: str, new: str) -> Path:
    """A copy of configs/ where ``relative`` has ``old`` replaced by ``new``."""
    root = tmp_path / "configs"
    shutil.copytree(default_config_root(), root)
    path = root / relative
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return root


@pytest.mark.parametrize("method, relative, old, new, message", [
    ("msp", "postprocessors/msp.yml", "APS_mode: false", "APS_mod: false",
     "unknown config key 'APS_mod' in 'postprocessors.msp.postprocessor'. Did you mean 'APS_mode'? "
     "Valid keys: APS_mode, name, postprocessor_args, postprocessor_sweep."),
    ("moodcat", "postprocessors/moodcat.yml", "mask_style: random_rectangle  #", "mask_stlye: none  #",
     "unknown config key 'mask_stlye' in 'postprocessors.moodcat.postprocessor.postprocessor_args'. Did you mean "
     "'mask_style'? Valid keys: cb_variants, label_source, mask_seed, mask_style, num_masks, scorers, test_area, use_ema."),
    ("oe", "postprocessors/oe.yml", "lambda_oe: 0.5", "lamda_oe: 0.5",
     "unknown config key 'lamda_oe' in 'postprocessors.oe.trainer'. Did you mean 'lambda_oe'?"),
    ("msp", "postprocessors/msp.yml", "postprocessor_args: {}", "postprocessor_args: {temperature: 2}",
     "unknown config key 'temperature' in 'postprocessors.msp.postprocessor.postprocessor_args', which takes no keys."),
    ("odin", "postprocessors/odin.yml", "temperature: [1, 10, 100, 1000]", "temperature: [1, 10, abc]",
     "config key 'postprocessors.odin.postprocessor.postprocessor_sweep.temperature' must be a number > 0, got 'abc'"),
    ("odin", "postprocessors/odin.yml", "    temperature: [1, 10, 100, 1000]", "    temprature: [1, 10]",
     "unknown config key 'temprature' in 'postprocessors.odin.postprocessor.postprocessor_sweep'. Did you mean "
     "'temperature'?"),
    ("moodcat", "postprocessors/moodcat.yml", "  lpips_trunk: vgg", "  lpips_trunk: resnet",
     "config key 'postprocessors.moodcat.iqa.lpips_trunk' must be one of vgg, alex, got 'resnet'"),
    ("msp", "benchmarks/demo.yml", "train_augment: [crop]", "train_augment: [crop, flipp]",
     "config key 'dataset.train_augment' must be a list of augmentations out of crop, flip, got ['crop', 'flipp']"),
])
def test_typos_in_config_files_fail_at_load(tmp_path, capsys, method, relative, old, new, message):
    root = config_root_with(tmp_path, relative, old, new)
    code, err, out = run_cli(tmp_path, capsys, "--config-root", str(root), methods=(method,))
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")


@pytest.mark.parametrize("text, message", [
    ("trainer:\n  num_epochs: [1\n", "is not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
    ('!!python/object/apply:os.system ["echo hi"]\n',  # safe loading: a config file never runs code
     "is not valid YAML at line 1, column 1: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_broken_yaml_file_is_one_line_with_its_position(tmp_path, capsys, text, message):
    extra = tmp_path / "extra.yml"
    extra.write_text(text)
    assert_refused_before_any_work(*run_cli(tmp_path, capsys, "--config", str(extra)), f"{extra} {message}; fix the file")


# -- numbers as people write them ----------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("1e-3", 0.001), ("5e-5", 5e-5), ("1.0e+10", 1e10), ("-1e-4", -1e-4), ("1.0e10", 1e10), ("2E3", 2000.0),
    ("0.1", 0.1), ("3", 3), ("abc", "abc"), ("1.2.3", "1.2.3"), ("e5", "e5"), ("1e", "1e"), ("'1e-3'", "1e-3"),
])
def test_scientific_notation_is_a_float_strings_stay_strings(text, value):
    assert parse_yaml(text) == value and type(parse_yaml(text)) is type(value)
    assert parse_override(f"trainer.lr={text}") == {"trainer": {"lr": value}}


def test_yaml_file_and_set_accept_1e_minus_3(make_config, tmp_path):
    user_file = tmp_path / "mine.yml"
    user_file.write_text("trainer:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = build_config("demo", ["msp"], "tiny", config_files=[str(user_file)], flags={"device": "cpu"})
    assert cfg.trainer.lr == pytest.approx(1e-3) and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.weight_decay == pytest.approx(5e-4)
    assert make_config(["msp"], "trainer.lr=1e-3").trainer.lr == pytest.approx(1e-3)


# -- MOODCAT's own sections ------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("postprocessors.moodcat.cb.lr=-1", "config key 'postprocessors.moodcat.cb.lr' must be a number > 0, got -1"),
    ("postprocessors.moodcat.cb.mask_style=rectangle", "config key 'postprocessors.moodcat.cb.mask_style' must be one of"),
    ("postprocessors.moodcat.cb.train_area=[0.3, 0.1]",
     "config key 'postprocessors.moodcat.cb.train_area' must be [lo, hi] area fractions with 0 < lo <= hi < 1"),
    ("postprocessors.moodcat.gan.betas=[0.5]", "config key 'postprocessors.moodcat.gan.betas' must be [beta1, beta2]"),
    ("postprocessors.moodcat.gan.num_epochs=0", "config key 'postprocessors.moodcat.gan.num_epochs' must be an integer >= 1"),
    ("postprocessors.moodcat.gan_network.ch=0", "config key 'postprocessors.moodcat.gan_network.ch' must be an integer >= 1"),
    ("postprocessors.moodcat.cb_network.ch=4", "config key 'postprocessors.moodcat.cb_network.ch' must be an integer >= 8"),
    ("postprocessors.moodcat.iqa.pretrained=maybe", "config key 'postprocessors.moodcat.iqa.pretrained' must be true or false"),
    ("postprocessors.moodcat.postprocessor.postprocessor_args.test_area=[0.1, 1.5]",
     "config key 'postprocessors.moodcat.postprocessor.postprocessor_args.test_area' must be [lo, hi]"),
    ("postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[]",
     "config key 'postprocessors.moodcat.postprocessor.postprocessor_args.scorers' must be a non-empty subset"),
])
def test_moodcat_sections_are_checked(make_config, override, message):
    with pytest.raises(ConfigError) as caught:
        make_config(["moodcat"], override)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


# -- every shipped config is valid; a new method brings its own schema ----------------------------------
@pytest.mark.parametrize("profile", ["tiny", "demo", "cpu", "gpu"])
def test_every_shipped_config_validates(profile):
    root = default_config_root()
    methods = available(root, "postprocessors")
    for benchmark in available(root, "benchmarks"):
        cfg = build_config(benchmark, methods, profile, flags={"device": "cpu"})
        assert set(cfg.postprocessors) == set(methods)


class ScaledArgs(Schema):
    scale: number(gt=0)


def test_a_registered_postprocessor_brings_its_own_args_schema(tmp_path):
    @register_postprocessor("scaled_msp_for_test")
    class ScaledMSP(BasePostprocessor):
        args_schema = ScaledArgs

    try:
        root = tmp_path / "configs"
        shutil.copytree(default_config_root(), root)
        (root / "postprocessors" / "scaled.yml").write_text(
            "postprocessor: {name: scaled_msp_for_test, postprocessor_args: {scale: 2}}\n")
        assert build_config("demo", ["scaled"], "tiny", config_root=root).postprocessors.scaled.postprocessor \
            .postprocessor_args.scale == 2
        with pytest.raises(ConfigError, match=r"^config key 'postprocessors\.scaled\.postprocessor\.postprocessor_args"
                                              r"\.scale' must be a number > 0, got 0$"):
            build_config("demo", ["scaled"], "tiny", config_root=root,
                         overrides=["postprocessors.scaled.postprocessor.postprocessor_args.scale=0"])
    finally:
        POSTPROCESSORS._entries.pop("scaled_msp_for_test")


def test_moodcat_checks_its_args_without_the_pipeline_too(make_config):
    """The OpenOOD bridge builds MoodcatPostprocessor from OpenOOD's config, not through build_config."""
    cfg = method_config(make_config(["moodcat"], "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]"),
                        "moodcat")
    cfg.postprocessor.postprocessor_args.mask_stlye = "none"
    with pytest.raises(ConfigError, match=r"^unknown config key 'mask_stlye' in 'postprocessor\.postprocessor_args'\. "
                                          r"Did you mean 'mask_style'\?"):
        MoodcatPostprocessor(cfg)


# -- sections replaced by values, malformed sweeps and benchmark splits ---------------------------------
@pytest.mark.parametrize("override, message", [
    ("postprocessors.msp=5", "config key 'postprocessors.msp' must be a section (a mapping of keys), got 5"),
    ("postprocessors.msp.postprocessor.postprocessor_args=5",
     "config key 'postprocessors.msp.postprocessor.postprocessor_args' must be a section (a mapping of keys) or null, got 5"),
    ("postprocessors.msp.postprocessor.APS_mode=1",
     "config key 'postprocessors.msp.postprocessor.APS_mode' must be true or false, got 1"),
    ("network.name=resnet", "config key 'network.name': unknown network 'resnet'. Did you mean: resnet18_32x32"),
    ("dataset.splits.near.extra={npzz: x}",
     "unknown config key 'npzz' in 'dataset.splits.near.extra'. Did you mean 'npz'? Valid keys: builtin, classes, demo, imglist, npz."),
    ("dataset.splits.near.extra={}",
     "config key 'dataset.splits.near.extra' must name where the set comes from (npz, imglist, demo or builtin), got {}"),
    ("dataset.splits.ood_val=null", "config key 'dataset.splits.ood_val' must be a section (a mapping of keys), got null"),
    ("device=gpu", "config key 'device' must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_structural_mistakes_name_the_key(override, message):
    with pytest.raises(ConfigError) as caught:
        build_config("demo", ["msp"], "tiny", overrides=[override])
    assert str(caught.value).startswith(message)


def test_nesterov_needs_momentum(make_config):
    with pytest.raises(ConfigError, match=r"^config key 'trainer\.nesterov' can only be true with momentum > 0"):
        make_config(["msp"], "trainer.momentum=0")


def test_class_names_must_name_every_class():
    from moodcat_plugin.errors import ConfigError
    from moodcat_plugin.pipeline import build_config

    assert build_config("cifar10", ["msp"]).dataset.class_names[0] == "airplane"
    with pytest.raises(ConfigError, match=r"'dataset.class_names' must name each of the num_classes=10"):
        build_config("cifar10", ["msp"], overrides=["dataset.class_names=[a, b]"])
