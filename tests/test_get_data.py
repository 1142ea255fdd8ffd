"""get_data: fetching, checking and converting benchmark data, all offline.

Every archive is built here (tiny torchvision-format CIFAR-10, MNIST and SVHN files, OpenOOD-style
zips) and served by an http.server on 127.0.0.1 (ephemeral port, stopped by the fixture); the file
table is injected, so nothing contacts the internet. torchvision's own md5s of the extracted files
are patched to those of the tiny files.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import pickle
import re
import shutil
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from torchvision import datasets

from moodcat_plugin.data import cache as cache_module
from moodcat_plugin.data import fetch_sets
from moodcat_plugin.data.arrays import ImageArray, read_imglist
from moodcat_plugin.data.cache import read_imglist_cached
from moodcat_plugin.data.download import RemoteFile
from moodcat_plugin.data.fetch_sets import DataSet, Fetcher
from moodcat_plugin.data.layout import write_array_layout

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LISTS = ("tiny/train.txt", "tiny/test.txt", "tiny/mnist.txt", "tiny/svhn.txt", "tiny/tin.txt")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours Range; for paths in ``server.drop`` sends the headers of the
    whole file but only half of the body, then closes the connection."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match else 0
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in server.drop:
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.drop, httpd.requests = {}, set(), []
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _pickled(obj) -> bytes:
    return pickle.dumps(obj)


def _tar_gz(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def build_sources(monkeypatch, rng):
    """Tiny copies of every source format: {served path: bytes}, the pristine arrays, and torchvision's
    md5 tables patched to the tiny extracted files."""
    files, truth = {}, {}
    # CIFAR-10, torchvision's python pickle batches: 5 train batches of 4 images, a test batch of 6
    batches, train_images, train_labels = {}, [], []
    for b in range(1, 6):
        images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 3, 4).tolist()
        train_images.append(images)
        train_labels += labels
        batches[f"data_batch_{b}"] = _pickled({"data": images.transpose(0, 3, 1, 2).reshape(4, -1), "labels": labels})
    test_images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    test_labels = [9, 0, 9, 1, 0, 9]
    batches["test_batch"] = _pickled({"data": test_images.transpose(0, 3, 1, 2).reshape(6, -1), "labels": test_labels})
    batches["batches.meta"] = _pickled({"label_names": CIFAR10_CLASSES})
    batches["readme.html"] = rng.bytes(1_500_000)  # incompressible: a dropped transfer keeps gdown's 512 KiB chunks
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{b}", _md5(batches[f"data_batch_{b}"])]
                                                         for b in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", _md5(batches["test_batch"])]])
    monkeypatch.setitem(datasets.CIFAR10.meta, "md5", _md5(batches["batches.meta"]))
    files["/cifar-10-python.tar.gz"] = _tar_gz({f"cifar-10-batches-py/{k}": v for k, v in batches.items()})
    truth["cifar_train"] = (np.concatenate(train_images), train_labels)
    truth["cifar_test"] = (test_images, test_labels)
    # MNIST, idx files gzipped
    for split, n in (("train", 3), ("t10k", 2)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        files[f"/{split}-images-idx3-ubyte.gz"] = gzip.compress(header + images.tobytes())
        files[f"/{split}-labels-idx1-ubyte.gz"] = gzip.compress(struct.pack(">II", 2049, n) + labels.tobytes())
        truth[f"mnist_{split}"] = (images, labels.tolist())
    # SVHN test .mat: X (32, 32, 3, N), y (N, 1) with 10 for the digit 0
    svhn = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": svhn.transpose(1, 2, 3, 0), "y": np.array([[10], [3], [7]], dtype=np.uint8)})
    files["/test_32x32.mat"] = buffer.getvalue()
    monkeypatch.setitem(datasets.SVHN.split_list, "test", ["unused", "test_32x32.mat", _md5(files["/test_32x32.mat"])])
    truth["svhn"] = (svhn, [0, 3, 7])
    # OpenOOD-style zips: Tiny-ImageNet images without a top folder, the lists inside benchmark_imglist/
    tin = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    files["/tin.zip"] = _zip({f"val/images/val_{i}.JPEG": _png(tin[i], "JPEG") for i in range(2)})
    counts, train_names = {}, []
    for label in train_labels:
        counts[label] = counts.get(label, 0) + 1
        train_names.append(f"cifar10/train/{CIFAR10_CLASSES[label]}/{counts[label]:04d}.png {label}")
    counts, test_names = {}, []
    for label in test_labels:
        counts[label] = counts.get(label, 0) + 1
        test_names.append(f"cifar10/test/{CIFAR10_CLASSES[label]}/{counts[label]:04d}.png {label}")
    lists = {
        "tiny/train.txt": train_names,
        "tiny/test.txt": test_names,
        "tiny/mnist.txt": [f"mnist/train/{label}_{i}.jpg -1" for i, label in enumerate(truth["mnist_train"][1])]
        + [f"mnist/test/{label}_{i}.jpg -1" for i, label in enumerate(truth["mnist_t10k"][1])],
        "tiny/svhn.txt": [f"svhn/test/{i + 1:06d}_{label}.jpg -1" for i, label in enumerate(truth["svhn"][1])],
        "tiny/tin.txt": [f"tin/val/images/val_{i}.JPEG -1" for i in range(2)],
    }
    list_bytes = {name: ("\n".join(lines) + "\n").encode() for name, lines in lists.items()}
    files["/benchmark_imglist.zip"] = _zip({f"benchmark_imglist/{k}": v for k, v in list_bytes.items()})
    list_sha = {name: hashlib.sha256(data).hexdigest() for name, data in list_bytes.items()}
    return files, truth, list_sha


def make_catalog(base: str, files: dict) -> dict:
    def remote(path):
        return RemoteFile(path.lstrip("/"), urls=(base + path,), size=len(files[path]), md5=_md5(files[path]))

    def zipped(path):  # as OpenOOD's archives: no published size or checksum, member CRCs checked
        return RemoteFile(path.lstrip("/"), urls=(base + path,))

    mnist = tuple(remote(p) for p in files if "idx" in p)
    return {
        "imglist": DataSet("imglist", "imglist", "lists", (zipped("/benchmark_imglist.zip"),)),
        "cifar10": DataSet("cifar10", "cifar10", "CIFAR-10", (remote("/cifar-10-python.tar.gz"),)),
        "mnist": DataSet("mnist", "mnist", "MNIST", mnist),
        "svhn": DataSet("svhn", "svhn", "SVHN", (remote("/test_32x32.mat"),)),
        "tin": DataSet("tin", "zip", "Tiny-ImageNet", (zipped("/tin.zip"),)),
    }


@pytest.fixture
def tiny(monkeypatch, server):
    """A benchmark 'tiny' of five sets served from 127.0.0.1: (server, truth, fetcher factory)."""
    files, truth, list_sha = build_sources(monkeypatch, np.random.default_rng(0))
    server.files = dict(files)
    catalog = make_catalog(server.base, files)
    monkeypatch.setitem(fetch_sets.BENCHMARK_SETS, "tiny", tuple(catalog))
    monkeypatch.setitem(fetch_sets.BENCHMARK_LISTS, "tiny", LISTS)
    monkeypatch.setitem(fetch_sets.BENCHMARK_CONFIGS, "tiny", "test")
    monkeypatch.setattr(fetch_sets, "default_catalog", lambda: catalog)
    monkeypatch.setattr(fetch_sets, "LIST_SHA256", list_sha)

    def fetcher(root):
        return Fetcher(root, retries=0, quiet=True)

    return server, files, truth, fetcher


def test_fetch_converts_torchvision_formats_and_openood_archives(tmp_path, tiny):
    server, _, truth, fetcher = tiny
    assert fetcher(tmp_path).run(["tiny"]) == []
    lists = tmp_path / "benchmark_imglist" / "tiny"
    images = tmp_path / "images_classic"
    train = read_imglist(lists / "train.txt", images, "train", progress=False)
    np.testing.assert_array_equal(train.images, truth["cifar_train"][0])  # lossless, in torchvision's order
    assert train.labels.tolist() == truth["cifar_train"][1]
    test = read_imglist(lists / "test.txt", images, "test", progress=False)
    np.testing.assert_array_equal(test.images, truth["cifar_test"][0])
    with Image.open(images / "mnist" / "test" / f"{truth['mnist_t10k'][1][1]}_1.jpg") as digit:
        np.testing.assert_array_equal(np.asarray(digit), truth["mnist_t10k"][0][1])
    with Image.open(images / "svhn" / "test" / "000001_0.jpg") as house:  # SVHN's label 10 is the digit 0
        np.testing.assert_array_equal(np.asarray(house), truth["svhn"][0][0])
    assert read_imglist(lists / "tin.txt", images, "tin", progress=False).images.shape == (2, 32, 32, 3)
    assert read_imglist(lists / "mnist.txt", images, "mnist", progress=False).images.shape == (5, 32, 32, 3)
    for name in ("imglist", "cifar10", "mnist", "svhn", "tin"):
        assert json.loads((tmp_path / ".get_data" / f"{name}.json").read_text())["files_sha256"]
    assert not (tmp_path / "downloads").exists() or not any((tmp_path / "downloads").iterdir())
    served = len(server.requests)
    assert fetcher(tmp_path).run(["tiny"]) == []  # everything installed: nothing is fetched again
    assert len(server.requests) == served
    shutil.rmtree(tmp_path / ".get_data")          # complete folders from elsewhere (OpenOOD's script) are kept
    assert fetcher(tmp_path).run(["tiny"]) == []
    assert len(server.requests) == served and (tmp_path / ".get_data" / "cifar10.json").is_file()


def test_failed_sets_are_named_others_complete_and_nothing_half_written_remains(tmp_path, tiny, script, capsys):
    server, files, _, _ = tiny
    server.files["/test_32x32.mat"] = files["/test_32x32.mat"][:100]               # truncated
    damaged = bytearray(files["/train-images-idx3-ubyte.gz"])
    damaged[-5] ^= 0xFF
    server.files["/train-images-idx3-ubyte.gz"] = bytes(damaged)                  # wrong checksum
    server.drop = {"/cifar-10-python.tar.gz"}                                      # connection dropped
    get_data = script("get_data")
    assert get_data.main(["--benchmark", "tiny", "--root", str(tmp_path), "--retries", "0"]) == 1
    report = capsys.readouterr().err.split("3 set(s) failed:\n")[1].strip().splitlines()
    assert len(report) == 3
    lines = dict(line.split(":", 1) for line in report)
    assert "has 100 bytes, expected" in lines["set 'svhn'"] and "run the same command again" in lines["set 'svhn'"]
    assert "wrong md5 checksum" in lines["set 'mnist'"] and "run the same command again" in lines["set 'mnist'"]
    assert "could not be downloaded" in lines["set 'cifar10'"] and "partial download resumes" in lines["set 'cifar10'"]
    for name in ("cifar10", "mnist", "svhn"):
        assert not (tmp_path / "images_classic" / name).exists()
        assert not (tmp_path / ".get_data" / f"{name}.json").exists()
    downloads = tmp_path / "downloads"
    assert not (downloads / "svhn" / "test_32x32.mat").exists()
    assert not (downloads / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()
    partial = list((downloads / "cifar10").iterdir())
    kept = partial[0].stat().st_size
    assert [p.suffix for p in partial] == [".part"] and kept > 0  # kept only to resume
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".") and p.name.endswith((".partial", ".old"))]
    for name in ("imglist", "tin"):  # the other sets completed
        assert (tmp_path / ".get_data" / f"{name}.json").is_file()

    server.files, server.drop = dict(files), set()
    server.requests.clear()
    assert get_data.main(["--benchmark", "tiny", "--root", str(tmp_path), "--retries", "0"]) == 0
    cifar_requests = [r for p, r in server.requests if p == "/cifar-10-python.tar.gz"]
    assert cifar_requests[-1] == f"bytes={kept}-"  # resumed where the dropped transfer stopped
    assert not any(p == "/tin.zip" for p, _ in server.requests)                 # installed sets are kept
    assert (tmp_path / "images_classic" / "cifar10" / "test" / "truck" / "0003.png").is_file()


def test_damaged_zip_fails_its_crc_check(tmp_path, tiny):
    server, files, _, fetcher = tiny
    archive = bytearray(files["/tin.zip"])
    offset = archive.index(b"JFIF") + 40                  # inside the first stored JPEG
    archive[offset] ^= 0xFF
    server.files["/tin.zip"] = bytes(archive)
    failures = fetcher(tmp_path).run(["tiny"])
    assert len(failures) == 1 and failures[0].startswith("set 'tin': tin.zip member val/images/val_0.JPEG fails")
    assert not (tmp_path / "images_classic" / "tin").exists()
    assert not list((tmp_path / "downloads" / "tin").glob("tin.zip*"))  # deleted: the next run restarts it


def test_help_lists_every_benchmark_and_set_with_sizes(script, capsys):
    with pytest.raises(SystemExit) as stop:
        script("get_data").main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for name in fetch_sets.BENCHMARK_SETS:
        assert re.search(rf"^  {name} +~ *\d+ MB  sets: ", text, re.M), name
    for name in fetch_sets.default_catalog():
        assert re.search(rf"^  {name} +~? *\d+ MB  ", text, re.M), name


def test_decoded_cache_hit_and_invalidation(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    array = ImageArray("toy", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 2, 1, 0]))
    write_array_layout(tmp_path, {"toy/set.txt": array})
    listfile = tmp_path / "benchmark_imglist" / "toy" / "set.txt"
    first = read_imglist_cached(listfile, tmp_path, "toy", progress=False)
    np.testing.assert_array_equal(first.images, array.images)
    entries = list((tmp_path / ".moodcat_cache").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("toy__set-32px-")

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache holds this list")

    monkeypatch.setattr(cache_module, "read_imglist", must_not_decode)
    second = read_imglist_cached(listfile, tmp_path, "again", progress=False)      # hit
    assert second.name == "again" and second.labels.tolist() == [0, 1, 2, 1, 0]
    np.testing.assert_array_equal(second.images, array.images)

    listfile.write_text("\n".join(listfile.read_text().splitlines()[:3]) + "\n")  # the list changes
    with pytest.raises(AssertionError, match="decoded although"):
        read_imglist_cached(listfile, tmp_path, "toy", progress=False)
    monkeypatch.undo()
    third = read_imglist_cached(listfile, tmp_path, "toy", progress=False)
    np.testing.assert_array_equal(third.images, array.images[:3])
    entries = list((tmp_path / ".moodcat_cache").glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("toy__set-32px-")      # the stale entry is gone
    assert not list((tmp_path / ".moodcat_cache").glob("*.tmp"))


def test_benchmark_reads_openood_layout_through_the_cache(tmp_path, monkeypatch):
    from moodcat_plugin.data.benchmark import load_benchmark

    rng = np.random.default_rng(4)

    def arrays(n, labels):
        return ImageArray("x", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.array(labels))

    write_array_layout(tmp_path, {"toy/train.txt": arrays(4, [0, 1, 0, 1]), "toy/test.txt": arrays(2, [1, 0]),
                                  "toy/ood.txt": arrays(2, [-1, -1])})
    spec = {"name": "toy", "num_classes": 2, "image_size": 32,
            "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "splits": {"id": {s: {"imglist": f"benchmark_imglist/toy/{'train' if s == 'train' else 'test'}.txt"}
                              for s in ("train", "val", "test")},
                       "ood_val": {"imglist": "benchmark_imglist/toy/ood.txt"}}}
    first = load_benchmark(spec, str(tmp_path), progress=False)
    monkeypatch.setattr(cache_module, "read_imglist", lambda *a, **k: pytest.fail("decoded on the second run"))
    second = load_benchmark(spec, str(tmp_path), progress=False)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(second.id[split].images, first.id[split].images)
        assert second.id[split].name == f"toy_{split}"
    assert len(list((tmp_path / ".moodcat_cache").glob("*.npz"))) == 3


def test_only_get_data_downloads():
    """The benchmark CLI never fetches: no module but fetch_sets (used by scripts/get_data.py) imports
    the download code, and nothing else imports gdown."""
    package = Path(__file__).resolve().parents[1] / "moodcat_plugin"
    importers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                       if re.search(r"^\s*(from|import) .*(data\.download|fetch_sets|gdown)", p.read_text(), re.M))
    assert importers == ["data/download.py", "data/fetch_sets.py"]


def test_images_the_lists_name_but_a_set_lacks_are_reported(tmp_path, tiny, monkeypatch):
    server, files, _, fetcher = tiny
    with zipfile.ZipFile(io.BytesIO(files["/benchmark_imglist.zip"])) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["benchmark_imglist/tiny/test.txt"] += b"cifar10/test/truck/0042.png 9\n"  # not in the tiny CIFAR-10
    server.files["/benchmark_imglist.zip"] = _zip(members)
    monkeypatch.setitem(fetch_sets.LIST_SHA256, "tiny/test.txt",
                        hashlib.sha256(members["benchmark_imglist/tiny/test.txt"]).hexdigest())
    failures = fetcher(tmp_path).run(["tiny"])
    assert failures == ["set 'cifar10': 1 of 27 images the lists name are missing under images_classic/cifar10 "
                        "(e.g. cifar10/test/truck/0042.png); delete images_classic/cifar10 and report it: the "
                        "archive does not match OpenOOD v1.5's lists"]
    monkeypatch.setitem(fetch_sets.LIST_SHA256, "tiny/test.txt", "0" * 64)     # a list that is not v1.5's
    failures = Fetcher(tmp_path / "other", retries=0, quiet=True).run(["tiny"])
    assert failures[0].startswith("set 'imglist': tiny/test.txt differs from OpenOOD v1.5's list (sha256)")
    assert not (tmp_path / "other" / "benchmark_imglist").exists()


def test_google_drive_refusal_names_the_manual_route(tmp_path, monkeypatch):
    """Drive's quota page (OpenOOD #185, #196, #202): the line says where to save the file by hand,
    and a file saved there is checked and used."""
    import gdown

    from moodcat_plugin.data.download import FetchError, fetch

    def refused(**kwargs):
        raise gdown.exceptions.FileURLRetrievalError("Failed to retrieve file url:\n\n\tToo many users ...")

    monkeypatch.setattr(gdown, "download", refused)
    remote = RemoteFile("tin.zip", gdrive_id="ABC123")
    with pytest.raises(FetchError) as error:
        fetch(remote, tmp_path, retries=0, quiet=True)
    message = str(error.value)
    assert "\n" not in message and "FileURLRetrievalError: Failed to retrieve file url:" in message
    assert f"save https://drive.google.com/uc?id=ABC123 from a browser as {tmp_path / 'tin.zip'}" in message
    (tmp_path / "tin.zip").write_bytes(_zip({"val/images/val_0.JPEG": b"x"}))
    assert fetch(remote, tmp_path, retries=0, quiet=True) == tmp_path / "tin.zip"  # checked (CRC), not fetched
