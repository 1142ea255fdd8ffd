"""scripts/import_moodcat_weights.py on hostile and mismatched files: one line naming the file and
the fix, nothing written, and a code-running pickle never runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from authors_reference import reference_layout_state
from moodcat_plugin.errors import UserError
from moodcat_plugin.moodcat.weights import MANIFEST, sha256_of
from test_authors_weights import write_reference_files


class WritesAMarker:
    """Unpickling this runs ``exec``, which writes a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The authors' three CIFAR-10 files (reference layout, the equality fixture's weights)."""
    from test_authors_weights import FIXTURE
    import numpy as np
    meta = json.loads(str(np.load(FIXTURE)["meta"]))
    return write_reference_files(tmp_path_factory.mktemp("authors"), 10, meta), meta


def _run(script, tmp_path, capsys, *args, benchmark="cifar10"):
    importer = script("import_moodcat_weights")
    out = tmp_path / "weights" / "imported.pt"
    code = importer.main(["--benchmark", benchmark, *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    return code, err, out


def test_import_records_every_source_file_and_strips_module_prefixes(files, script, tmp_path, capsys):
    paths, _ = files
    prefixed = tmp_path / "cifar10_ind" / "G_ep_3999.pth"
    prefixed.parent.mkdir()
    torch.save({"module." + k: v for k, v in torch.load(paths["generator"], weights_only=True).items()}, prefixed)
    code, err, out = _run(script, tmp_path, capsys, "--encoder", str(paths["encoder"]), "--generator", str(prefixed),
                          "--cb", str(paths["cb"]))
    assert code == 0, err
    entry = json.loads((out.parent / MANIFEST).read_text())["files"][out.name]
    assert entry["sha256"] == sha256_of(out) and entry["parts"] == ["cb", "decoder", "encoder"]
    sources = entry["authors_files"]
    assert sources["generator"]["sha256"] == sha256_of(prefixed) and "non-EMA" in sources["generator"]["is"]
    assert sources["cb"]["sha256"] == sha256_of(paths["cb"]) and "cat6" in sources["cb"]["is"]
    content = torch.load(out, weights_only=True)
    assert content["cb_network"]["relu_shortcut"] is True
    assert all(t.dtype == torch.float32 for t in content["modules"]["decoder"].values() if t.is_floating_point())


def test_a_code_running_pickle_is_refused_and_never_runs(files, script, tmp_path, capsys):
    paths, _ = files
    marker = tmp_path / "marker.txt"
    hostile = tmp_path / "cifar10_ind" / "acc=hostile.pth"
    hostile.parent.mkdir()
    cb_state = torch.load(paths["cb"], weights_only=True)
    torch.save({**cb_state, "extra": WritesAMarker(marker)}, hostile)
    code, err, out = _run(script, tmp_path, capsys, "--encoder", str(paths["encoder"]),
                          "--generator", str(paths["generator"]), "--cb", str(hostile))
    assert code == 2 and "\n" not in err and str(hostile) in err and "refused" in err and "nothing in it was run" in err
    assert not marker.exists() and not out.exists()
    torch.load(hostile, weights_only=False)  # proof that the file is hostile: unsafe unpickling runs it
    assert marker.read_text() == "code ran"


def test_truncated_file_names_it_and_the_download(files, script, tmp_path, capsys):
    paths, _ = files
    truncated = tmp_path / "G_ep_3999.pth"
    truncated.write_bytes(paths["generator"].read_bytes()[:100_000])
    code, err, out = _run(script, tmp_path, capsys, "--encoder", str(paths["encoder"]), "--generator", str(truncated))
    assert code == 2 and "\n" not in err and str(truncated) in err and "truncated" in err and "download it again" in err
    assert not out.exists()


def test_wrong_class_count_and_other_benchmarks_files(files, script, tmp_path, capsys):
    paths, meta = files
    layout_100 = [(k, [100 if s == 10 else s for s in shape]) for k, shape in meta["layouts_10"]["decoder"]]
    generator_100 = tmp_path / "G_ep_3999.pth"
    torch.save(reference_layout_state(layout_100, 5), generator_100)
    code, err, _ = _run(script, tmp_path, capsys, "--encoder", str(paths["encoder"]), "--generator", str(generator_100))
    assert code == 2 and str(generator_100) in err and "100-class generator (cifar100)" in err
    assert "--benchmark cifar10 has 10 classes" in err and "ckpt/cifar10_ind" in err

    # the CIFAR-10 files for a CIFAR-100 run (class count), and a CIFAR-100 encoder for CIFAR-10 (name)
    code, err, _ = _run(script, tmp_path, capsys, "--encoder", str(paths["encoder"]), "--generator",
                        str(paths["generator"]), benchmark="cifar100")
    assert code == 2 and "cifar10_ind" in err and "\n" not in err
    encoder_100 = tmp_path / "ckpt" / "cifar100_ind" / "E_ep_3999.pth"
    encoder_100.parent.mkdir(parents=True)
    encoder_100.write_bytes(paths["encoder"].read_bytes())
    code, err, _ = _run(script, tmp_path, capsys, "--encoder", str(encoder_100), "--generator", str(paths["generator"]))
    assert code == 2 and str(encoder_100) in err and "named after cifar100, not cifar10" in err


def test_mismatched_epochs_and_shapes(files, tmp_path):
    from moodcat_plugin.moodcat.authors_weights import import_authors_weights
    paths, meta = files
    other_epoch = tmp_path / "E_ep_3000.pth"
    other_epoch.write_bytes(paths["encoder"].read_bytes())
    with pytest.raises(UserError, match="different epochs"):
        import_authors_weights("cifar10", 10, other_epoch, paths["generator"], tmp_path / "w.pt")
    narrow = [(k, [s // 2 if s == 64 else s for s in shape]) for k, shape in meta["layouts_10"]["cb"]]
    narrow_cb = tmp_path / "acc=narrow.pth"
    torch.save({"state_dict": reference_layout_state(narrow, 3)}, narrow_cb)
    with pytest.raises(UserError, match=r"acc=narrow.pth is not the authors' cb at paper size \(shape"):
        import_authors_weights("cifar10", 10, paths["encoder"], paths["generator"], tmp_path / "w.pt", cb=narrow_cb)
    assert not (tmp_path / "w.pt").exists()
