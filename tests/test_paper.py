"""scripts/reproduce_paper.py: a tiny run of every table (shape and headers, not numbers), the
'not run' paths, resuming, and the wall-time estimate. Runs share one output folder, so models
and scoring runs shared by tables are trained once (as in real use)."""
import copy
import json
import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from moodcat_plugin.paper import cli as paper_cli
from moodcat_plugin.paper.estimate import CostModel, estimate_runs
from moodcat_plugin.paper.runs import Context, execute, is_finished, run_config
from moodcat_plugin.paper.spec import load_tables
from moodcat_plugin.paper.tables import column_names
from moodcat_plugin.pipeline import classifier_run, default_config_root, method_config
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor

TABLES = [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
MISSING_SETS = {"svhn", "lsun", "places365"}  # not in the data pack (nor in the fake one)


@pytest.fixture(scope="session")
def paper_out(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")


@pytest.fixture(autouse=True)
def _no_grids(monkeypatch):
    """MOODCAT's picture grids (matplotlib, ~3 s per set) are not what these tests check."""
    monkeypatch.setattr(MoodcatPostprocessor, "_save_grids", lambda self, *args: None)


@pytest.fixture
def empty_hub(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield
    torch.hub.set_dir(previous)


def _args(out, pack, *extra):
    return ["--profile", "tiny", "--device", "cpu", "--output-dir", str(out), "--data-root", str(pack),
            "--no-progress", *extra]


def _csv_rows(path: Path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _expected_lines(table) -> int:
    if table.layout == "per_set":
        return len(table.rows) * (len(table.sets) + len(table.summaries))
    return len(table.rows)


@pytest.mark.parametrize("number", TABLES)
def test_every_table_runs_at_the_tiny_profile(number, paper_out, fake_data_pack, capsys):
    assert paper_cli.main(["--table", str(number), *_args(paper_out, fake_data_pack)]) == 0
    table = load_tables(default_config_root())[number]
    markdown = (paper_out / "paper" / f"table{number}.md").read_text()
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    assert markdown.startswith(f"# Table {number} of the MOODCAT paper, reproduced")
    for words in ("**Protocol:** deployable", "**Profile:** `tiny`", "**Commit:**", "**Wall time:** expected",
                  f"*{table.caption[:40]}"):
        assert words in markdown
    labels, values = column_names(table)
    header = next(line for line in markdown.splitlines() if line.startswith("| "))
    assert header == "| " + " | ".join(labels + [f"Paper {v}" for v in values] + [f"Ours {v}" for v in values]) + " |"

    rows = _csv_rows(paper_out / "paper" / f"table{number}.csv")
    assert len(rows) == _expected_lines(table)
    names = [v.split(" ")[0] for v in values]
    assert list(rows[0]) == (["table"] + labels + [f"{g}_{n}{s}" for g in ("paper", "ours") for n in names
                                                  for s in ("", "_std")] + ["ours_status"])
    for row in rows:
        status = row["ours_status"]
        if status == "ok":  # every value a percentage
            assert all(0 <= float(row[f"ours_{n}"]) <= 100 for n in names)
        else:
            assert status.startswith("not run: "), status
    if table.layout == "per_set":
        for row in rows:
            ours_set = table.sets.get(row["OOD"])
            if ours_set in MISSING_SETS:
                assert row["ours_status"] == f"not run: set {ours_set} not in the data folder"
            elif ours_set is not None:
                assert row["ours_status"] == "ok"
    elif table.layout == "osr":
        status = {row["Method"]: row["ours_status"] for row in rows}
        assert status["OSRCI [32]"].startswith("not run: another OSR method")
        assert all(status[m] == "ok" for m in ("MOODCAT (ours)", "MSP", "EBO", "ODIN"))
    else:
        assert all(row["ours_status"] == "ok" for row in rows)  # tiny profile: random IQA trunks, no weights needed


def test_repeated_rows_report_a_spread(paper_out, fake_data_pack):
    """Table 5's random-mask rows are 3 scorings with other test masks: mean ± std, std present."""
    paper_cli.main(["--table", "5", *_args(paper_out, fake_data_pack)])
    rows = {(r["Training"], r["Inference"]): r for r in _csv_rows(paper_out / "paper" / "table5.csv")}
    assert rows[("with mask", "Randomly")]["ours_AUROC_std"] != ""
    assert rows[("with mask", "Fix Low Ratio")]["ours_AUROC_std"] == ""
    assert float(rows[("with mask", "Randomly")]["paper_AUROC_std"]) == pytest.approx(0.17)


def test_tables_share_runs_and_a_second_call_resumes(paper_out, fake_data_pack):
    """Table 9 is Table 1's moodcat_ext run; running a finished table again trains and scores nothing."""
    ctx = Context(config_root=default_config_root(), profile="tiny", output_dir=paper_out,
                  data_root=str(fake_data_pack), device="cpu", progress=False)
    tables = load_tables(default_config_root())
    assert set(tables[9].runs()) <= set(tables[1].runs())
    for number in (1, 9):
        paper_cli.main(["--table", str(number), *_args(paper_out, fake_data_pack)])
    folders = sorted(p.name for p in (paper_out / "checkpoints").iterdir())
    for run in tables[9].runs():
        assert is_finished(run, ctx) and execute(run, ctx) == "already finished"
    assert sorted(p.name for p in (paper_out / "checkpoints").iterdir()) == folders


def test_interrupted_table_keeps_finished_rows(tmp_path, fake_data_pack, caplog):
    """A run that dies mid-table leaves the table written with the finished rows and 'pending' for
    the rest; the rerun completes it."""
    ctx = Context(config_root=default_config_root(), profile="tiny", output_dir=tmp_path,
                  data_root=str(fake_data_pack), device="cpu", progress=False)
    table = load_tables(default_config_root())[8]
    calls = []

    def dies_on_second(run, context):
        calls.append(run)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return execute(run, context)

    with pytest.raises(KeyboardInterrupt):
        paper_cli.reproduce_table(table, ctx, command="CMD", execute=dies_on_second)
    status = {(r["Method"], r["OOD"]): r["ours_status"] for r in _csv_rows(tmp_path / "paper" / "table8.csv")}
    assert status[("ODIN", "CIFAR-10")] == "ok"
    assert status[("EBO", "CIFAR-10")] == status[("Ours", "TEXTURE")] == "not run: pending (CMD)"
    paper_cli.reproduce_table(table, ctx, command="CMD")
    status = {(r["Method"], r["OOD"]): r["ours_status"] for r in _csv_rows(tmp_path / "paper" / "table8.csv")}
    assert status[("EBO", "CIFAR-10")] == status[("Ours", "TEXTURE")] == "ok"


def test_iqa_rows_not_run_without_weights(tmp_path, fake_data_pack, empty_hub):
    """With pretrained IQA trunks asked for (every profile but tiny) and an empty torch hub cache,
    LPIPS/DISTS rows say which files are missing; the Cb row still runs."""
    table = copy.deepcopy(load_tables(default_config_root())[4])
    table.rows = table.rows[:4]  # Cb, LPIPS, DISTS, Cb + LPIPS
    for row in table.rows:
        row.run = replace(row.run, runs=tuple(replace(r, overrides=r.overrides + ("iqa.pretrained=true",))
                                              for r in row.run.runs))
    ctx = Context(config_root=default_config_root(), profile="tiny", output_dir=tmp_path,
                  data_root=str(fake_data_pack), device="cpu", progress=False)
    markdown = paper_cli.reproduce_table(table, ctx, command="CMD")
    status = {r["Anomalous Scorer"]: r["ours_status"] for r in _csv_rows(tmp_path / "paper" / "table4.csv")}
    assert status["Cb"] == "ok"
    assert status["LPIPS"].startswith("not run: weights missing (vgg16-397923af.pth in ")
    assert status["DISTS"].startswith("not run: weights missing (dists_weights.pt, vgg16-397923af.pth in ")
    assert status["Cb + LPIPS"].startswith("not run: weights missing (vgg16-397923af.pth")
    assert "| LPIPS | 76.62 | 73.93 | 72.68 | 73.23 | not run: weights missing" in markdown


def test_list_names_every_table_and_its_time(capsys, empty_hub, tmp_path):
    """--list on a clean checkout (no data, no results): every table, its command and expected
    cpu time from the recorded costs, whether it fits one sitting, and the parts of those that do not."""
    assert paper_cli.main(["--list", "--output-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    for number in TABLES:
        assert f"Table {number}: " in listing
        assert f"python scripts/reproduce_paper.py --table {number}" in listing
    assert "Table 7:" not in listing
    assert listing.count("from scratch (fits one sitting)") + listing.count("MORE than one sitting") == len(TABLES)
    assert "--part cifar-split0:" in listing and "--part mcd-oe:" in listing
    assert "rows that will print 'not run': weights missing (dists_weights.pt, vgg16-397923af.pth" in listing


def test_estimate_counts_what_is_cached(tmp_path):
    """The cpu estimate of Table 8 is the sum of the recorded per-unit costs; a classifier already in
    the checkpoint cache drops out of it."""
    ctx = Context(config_root=default_config_root(), profile="cpu", output_dir=tmp_path, device="cpu",
                  data_root=str(tmp_path / "no_data"))
    runs = load_tables(default_config_root())[8].runs()
    model = CostModel(default_config_root(), "cpu")
    before = estimate_runs(runs, ctx, model)
    items = {what: seconds for what, seconds, _ in before.items}
    expected = 20 * 20000 * model.units["classifier_image_epoch_s"]  # cpu profile: 20 epochs of the 20k images
    assert items["train base classifier cifar100"] == pytest.approx(expected)
    assert items["train generator cifar100"] == pytest.approx(12 * 200 * 64 * model.units["gan_image_s"])
    cfg = method_config(run_config(runs[0], ctx), runs[0].method)
    cfg.device = "cpu"
    folder = classifier_run(cfg)[1]  # the classifier's run folder, as the Runner names it
    folder.mkdir(parents=True)
    (folder / "final.ckpt").write_bytes(b"")
    after = estimate_runs(runs, ctx, model)
    assert before.seconds - after.seconds == pytest.approx(expected)
    assert "already done: 1 item(s)" in after.summary()


def test_unknown_table_and_part_are_one_line_errors(capsys, tmp_path):
    assert paper_cli.main(["--table", "7", "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: the paper has no reproducible table 7; tables: 1, 2, 3, 4")
    assert paper_cli.main(["--table", "3", "--part", "nope", "--output-dir", str(tmp_path)]) == 2
    assert "table 3 has no part 'nope'; its parts: cifar-split0" in capsys.readouterr().err


def test_runs_are_keyed_by_what_decides_their_scores(tmp_path):
    """Equal runs share a folder across tables; another profile, scorer set or OOD set list does not."""
    tables = load_tables(default_config_root())
    ctx = Context(config_root=default_config_root(), profile="tiny", output_dir=tmp_path, device="cpu")
    table4_cb, table6_ours = tables[4].rows[0].run.runs[0], tables[6].rows[0].run.runs[0]
    assert table4_cb == table6_ours
    table1_ours = tables[1].rows[2].run.runs[0]
    folders = {run_config(run, ctx).output_dir for run in (table4_cb, table1_ours, tables[4].rows[1].run.runs[0])}
    assert len(folders) == 3
    other = Context(config_root=default_config_root(), profile="demo", output_dir=tmp_path, device="cpu")
    assert run_config(table4_cb, other).output_dir != run_config(table4_cb, ctx).output_dir
    scood = run_config(table1_ours, ctx).dataset
    assert scood.name == "cifar10"  # the models of benchmark cifar10, scored on the paper's SC-OOD sets
    assert set(scood.splits.near) | set(scood.splits.far) == {"cifar100", "tin", "svhn", "texture", "lsun", "places365"}
    repeats = tables[5].rows[5].run.runs  # "with mask, Randomly": 3 scorings, the first the plain run
    assert len(repeats) == 3 and repeats[0] == tables[4].rows[0].run.runs[0]
    assert [r.overrides for r in repeats[1:]] == [
        tuple(sorted(repeats[0].overrides + (f"postprocessor.postprocessor_args.mask_seed={k}",))) for k in (1, 2)]


def test_method_overrides_apply_to_that_methods_runs_only(tmp_path, capsys):
    """``--set postprocessors.moodcat...`` changes MOODCAT's runs and leaves the other methods' runs
    alone; a known method the table does not run is accepted (one set of flags for every table); an
    unknown method is a one-line error before anything runs."""
    table = load_tables(default_config_root())[1]
    ctx = Context(config_root=default_config_root(), profile="tiny", output_dir=tmp_path, device="cpu",
                  overrides=["num_threads=1", "postprocessors.moodcat.gan.cutmix=false"])
    by_method = {run.method: run_config(run, ctx) for run in table.runs()}
    assert method_config(by_method["moodcat"], "moodcat").gan.cutmix is False
    assert method_config(by_method["moodcat_ext"], "moodcat_ext").gan.cutmix is True
    assert all(config.num_threads == 1 for config in by_method.values())
    assert paper_cli.main(["--table", "1", "--estimate", "--output-dir", str(tmp_path),
                           "--set", "postprocessors.moodcta.gan.cutmix=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set postprocessors.moodcta.gan.cutmix=false: there is no method 'moodcta' "
                          "(methods: ")
    assert len(err.strip().splitlines()) == 1
    assert paper_cli.main(["--table", "10", "--estimate", "--output-dir", str(tmp_path),
                           "--set", "postprocessors.moodcat.gan.cutmix=false"]) == 0  # table 10 runs moodcat_ext only


def test_a_set_that_a_table_row_fixes_is_a_one_line_error(tmp_path, capsys):
    """A row's own settings define the table and are applied last: a ``--set`` of the same key (or of
    a section holding it) would be silently ignored, so it is refused before anything runs. Keys
    that only share a prefix of their name (gan / gan_network) do not clash."""
    def main(table, override):
        return paper_cli.main(["--table", table, "--estimate", "--output-dir", str(tmp_path), "--set", override])

    assert main("3", "postprocessors.moodcat.gan.cutmix_consistency=detached") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set postprocessors.moodcat.gan.cutmix_consistency=detached: the table fixes "
                          'postprocessors.moodcat.gan.cutmix_consistency="joint" for \'moodcat on osr_cifar6_split0')
    assert len(err.strip().splitlines()) == 1
    assert main("6", "postprocessors.moodcat.gan_network={}") == 2
    assert "the table fixes postprocessors.moodcat.gan_network.conditional=false" in capsys.readouterr().err
    assert main("6", "postprocessors.moodcat.gan.cutmix=false") == 0  # PAPER.md's Table 6 cifar100 flag


def test_osr_cell_quotes_finished_splits_while_others_are_pending():
    """Table 3 after one of its parts: the CIFAR cell has no mean (it promises three splits) but
    says which split values exist; CIFAR+N cells, whose part has not run, say only 'pending'."""
    from moodcat_plugin.paper.tables import Cell, table_lines

    class OneSplitDone:
        def metric(self, run, component, ood_set, metric):
            if run.benchmark == "osr_cifar6_split0":
                return Cell(71.5 if run.method == "msp" else 60.25)
            return Cell(reason="not run: pending (CMD)")

    table = load_tables(default_config_root())[3]
    cells = {line.labels[0]: line.ours for line in table_lines(table, OneSplitDone())}
    cifar, plus10, plus50 = cells["MSP"]
    assert cifar.mean is None and cifar.reason == "not run: pending (CMD); finished 1 of 3: 71.50"
    assert plus10.reason == plus50.reason == "not run: pending (CMD)"
    assert cells["MOODCAT (ours)"][0].reason.endswith("finished 1 of 3: 60.25")


def test_pending_cells_name_the_command_that_resumes_the_same_runs():
    """--set overrides and the device name the runs (they are in cache keys): a 'pending' cell's
    command must repeat them, or rerunning it trains other models."""
    args = paper_cli.parse_args(["--table", "3", "--part", "cifar-split0", "--output-dir", "/tmp/out dir",
                                 "--device", "cpu", "--set", "num_threads=1",
                                 "--set", "postprocessors.moodcat.gan.cutmix=false"])
    assert paper_cli.command_line(args, 3) == (
        "python scripts/reproduce_paper.py --table 3 --device cpu --output-dir '/tmp/out dir' "
        "--set num_threads=1 --set postprocessors.moodcat.gan.cutmix=false")
    plain = paper_cli.parse_args(["--table", "1"])
    assert paper_cli.command_line(plain, 1, part="x") == "python scripts/reproduce_paper.py --table 1 --part x"


def test_table1_with_imported_authors_weights_under_the_authors_protocol(paper_out, fake_data_pack, tmp_path, capsys):
    """reproduce_paper --pretrained (the authors' weights, imported) --protocol authors: the MOODCAT rows
    score the file under true (ID) / random (OOD) labels, in their own table file whose header says so."""
    from moodcat_plugin.moodcat.authors_weights import import_authors_weights
    from test_authors_pretrained_scoring import authors_files_for

    files = authors_files_for(tmp_path / "ckpt", 10)
    weights = tmp_path / "weights" / "moodcat_cifar10_authors.pt"
    weights.parent.mkdir()
    entry = import_authors_weights("cifar10", 10, files["encoder"], files["decoder"], weights, cb=files["cb"])
    args = ["--table", "1", "--pretrained", str(weights), "--protocol", "authors", *_args(paper_out, fake_data_pack)]
    assert paper_cli.main(args) == 0
    markdown = (paper_out / "paper" / "table1-protocol-authors.md").read_text()
    assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "**Protocol:** authors (--protocol authors)" in markdown and "never written to a leaderboard" in markdown
    assert f"**Pretrained MOODCAT:** cifar10: `{weights}`" in markdown
    ctx = paper_cli.context(paper_cli.parse_args(args))
    runs = [run for run in load_tables(default_config_root())[1].runs() if run.method == "moodcat"]
    assert runs and all(run_config(run, ctx).output_dir.endswith("-protocol-authors") for run in runs)
    meta = json.loads((Path(run_config(runs[0], ctx).output_dir) / "cifar10" / "scores" / "moodcat" / "meta.json").read_text())
    assert meta["protocol"] == "authors" and meta["training"]["moodcat_gan"]["sha256"] == entry["sha256"]
    assert meta["training"]["moodcat_cb"]["pretrained"] == str(weights)
    rows = _csv_rows(paper_out / "paper" / "table1-protocol-authors.csv")
    ours = [row for row in rows if row["Method"] == "Ours" and row["OOD"] == "CIFAR-100"]
    assert ours and ours[0]["ours_status"] == "ok"
