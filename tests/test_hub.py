"""Hub: export real runs, load them back through every source, and refuse what is unsafe or damaged."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import ROOT, tiny_config
from ssl_zoo import hub
from ssl_zoo.cli import main as cli_main
from ssl_zoo.experiment import load_config
from ssl_zoo.run_dir import load_method
from ssl_zoo.hub.download import download
from ssl_zoo.hub.export import export
from ssl_zoo.hub.index import HubError, check_location, check_name, parse_index
from ssl_zoo.trainer import Trainer

RUNS = {  # name in the hub -> (method, extra config sections)
    "simclrv2-r18": ("simclrv2", {"eval": {"final_knn": True}}),
    "simclrv2-r18-cifar": ("simclrv2", {"model": {"backbone": "resnet18", "stem": "cifar"}}),
    "dino-vit": ("dino", {}),
    "mae-vit": ("mae", {}),
}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class RangeHandler(QuietHandler):
    """Serves `Range: bytes=N-` with 206 (SimpleHTTPRequestHandler ignores Range); counts body bytes."""

    sent = 0

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes=") or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()[int(spec[6:].rstrip("-")):]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        type(self).sent += len(data)


class DroppingHandler(RangeHandler):
    """A whole-file GET announces the full length (unless `announce` is off) but sends only the first
    `drop_at` bytes and closes the connection; a Range GET (the resume) is served in full."""

    drop_at = 0
    announce = True

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if self.headers.get("Range") or not path.is_file() or path.suffix == ".json":
            return super().do_GET()
        data = path.read_bytes()
        self.send_response(200)
        if self.announce:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: self.drop_at])
        self.wfile.flush()
        self.close_connection = True


def serve(folder: Path, handler=QuietHandler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def stop(server: ThreadingHTTPServer) -> None:
    """Stop serving AND close the socket: a listening socket left open makes later requests hang
    until their timeout instead of failing fast as 'unreachable'."""
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Short real runs of every method, exported into one hub; plus each run's backbone and features."""
    root = tmp_path_factory.mktemp("hub")
    hub_dir = root / "hub"
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    runs = {}
    for name, (method, sections) in RUNS.items():
        cfg = load_config(tiny_config(method, root / name, train={"max_steps": 2}, **sections))
        result = Trainer(cfg, progress_bar=False).fit()
        export(result.run_dir, name, hub_dir)
        backbone = load_method(result.run_dir).method.backbone()
        with torch.no_grad():
            runs[name] = {"run_dir": result.run_dir, "features": backbone(x), "knn": result.knn_top1}
    return {"hub": hub_dir, "x": x, "runs": runs}


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_features(model, exported, name) -> None:
    expected = exported["runs"][name]["features"]
    got = features(model, exported["x"])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_export_writes_weights_config_card_and_index(exported):
    hub_dir = exported["hub"]
    index = json.loads((hub_dir / "index.json").read_text())
    assert set(index["models"]) == set(RUNS)
    for name, (method, _) in RUNS.items():
        folder = hub_dir / name
        assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
        config = json.loads((folder / "config.json").read_text())
        sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        assert config["ssl_zoo"]["sha256"] == index["models"][name]["sha256"] == sha
        assert config["ssl_zoo"]["method"] == index["models"][name]["method"] == method
        assert config["ssl_zoo"]["steps"] == 2 and config["ssl_zoo"]["dataset"] == "synthetic"
        assert config["pretrained_cfg"]["input_size"] == [3, 28, 28]
        assert config["ssl_zoo"]["config"]["method"]["name"] == method
        assert name in (folder / "README.md").read_text() and sha in (folder / "README.md").read_text()
    knn = exported["runs"]["simclrv2-r18"]["knn"]
    assert knn is not None and index["models"]["simclrv2-r18"]["metrics"]["knn_top1"] == pytest.approx(knn)
    assert (json.loads((hub_dir / "dino-vit/config.json").read_text())["pretrained_cfg"]["mean"]
            == pytest.approx([0.485, 0.456, 0.406]))


def test_only_the_evaluated_backbone_is_exported(exported):
    from safetensors import safe_open

    for name in RUNS:
        with safe_open(str(exported["hub"] / name / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert not any(k.startswith(("head", "teacher", "student", "encoder", "decoder")) for k in keys), name
    dino = load_method(exported["runs"]["dino-vit"]["run_dir"]).method
    teacher = dino.teacher.backbone.state_dict()
    with safe_open(str(exported["hub"] / "dino-vit/model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(teacher)
        assert all(torch.equal(f.get_tensor(k), teacher[k]) for k in teacher)
        # the student moved away from the teacher: exporting the student would differ
        student = dino.student.backbone.state_dict()
        assert any(not torch.equal(f.get_tensor(k), student[k]) for k in teacher)


@pytest.mark.parametrize("name", [n for n in RUNS if "cifar" not in n])
def test_timm_one_liner_loads_with_no_missing_or_unexpected_keys(exported, name):
    folder = exported["hub"] / name
    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
                              **config["model_args"])
    assert_same_features(model, exported, name)
    from safetensors.torch import load_file

    result = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_features(timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0), exported, name)


def test_resnet_export_loads_with_the_plain_timm_call(exported):
    """No model_args needed for the ImageNet-stem ResNet: exactly the issue's one-liner."""
    path = exported["hub"] / "simclrv2-r18/model.safetensors"
    model = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0)
    assert_same_features(model, exported, "simclrv2-r18")


@pytest.mark.parametrize("name", list(RUNS))
def test_load_from_folder_file_url_and_local_hub(exported, name):
    hub_dir = exported["hub"]
    assert_same_features(hub.load(hub_dir / name), exported, name)
    assert_same_features(hub.load((hub_dir / name).as_uri()), exported, name)
    assert_same_features(hub.load(name, hub=hub_dir), exported, name)
    assert_same_features(hub.load(name, hub=hub_dir.as_uri()), exported, name)


def test_cifar_stem_export_loads_as_zoo_model(exported):
    config = json.loads((exported["hub"] / "simclrv2-r18-cifar/config.json").read_text())
    assert config["ssl_zoo"]["timm_compatible"] is False and config["ssl_zoo"]["stem"] == "cifar"
    model = hub.load("simclrv2-r18-cifar", hub=exported["hub"], num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model(exported["x"]).shape == (4, 10)


def test_num_classes_adds_a_fresh_classifier(exported):
    model = hub.load("simclrv2-r18", hub=exported["hub"], num_classes=7)
    assert model(exported["x"]).shape == (4, 7)
    model.reset_classifier(0)
    assert_same_features(model, exported, "simclrv2-r18")


def test_http_hub_downloads_into_cache_and_verifies(exported, tmp_path, monkeypatch):
    server, url = serve(exported["hub"])
    try:
        cache = tmp_path / "cache"
        for name in RUNS:
            assert_same_features(hub.load(name, hub=url, cache_dir=cache), exported, name)
        monkeypatch.setenv("SSL_ZOO_CACHE", str(tmp_path / "env_cache"))
        assert_same_features(hub.load(f"{url}/mae-vit"), exported, "mae-vit")  # a model folder URL
        assert list((tmp_path / "env_cache").rglob("model.safetensors"))
    finally:
        stop(server)
    cached = list(cache.rglob("model.safetensors"))
    assert len(cached) == len(RUNS) and not list(cache.rglob("*.part"))
    # offline: the server is gone; the cached copy still loads (and is re-verified), new names fail clearly
    with pytest.warns(UserWarning, match="unreachable"):
        assert_same_features(hub.load("dino-vit", hub=url, cache_dir=cache), exported, "dino-vit")
    with pytest.raises(HubError, match="cannot reach"):
        hub.load("dino-vit", hub=url, cache_dir=tmp_path / "empty_cache")


def test_sha256_mismatch_is_an_error_and_the_bad_file_is_not_kept(exported, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(exported["hub"], served)
    weights = served / "simclrv2-r18/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    server, url = serve(served)
    try:
        with pytest.raises(HubError, match="sha256 mismatch"):
            hub.load("simclrv2-r18", hub=url, cache_dir=tmp_path / "cache")
    finally:
        stop(server)
    assert not list((tmp_path / "cache").rglob("model.safetensors*"))
    with pytest.raises(HubError, match="sha256 mismatch"):  # local folders are verified too
        hub.load("simclrv2-r18", hub=served)


def test_corrupt_safetensors_is_a_clear_error(exported, tmp_path):
    hub_dir = tmp_path / "hub"
    shutil.copytree(exported["hub"], hub_dir)
    weights = hub_dir / "mae-vit/model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    for path, key in ((hub_dir / "mae-vit/config.json", "ssl_zoo"), (hub_dir / "index.json", None)):
        doc = json.loads(path.read_text())
        (doc[key] if key else doc["models"]["mae-vit"])["sha256"] = sha
        path.write_text(json.dumps(doc))
    with pytest.raises(HubError, match="not a readable safetensors"):
        hub.load("mae-vit", hub=hub_dir)


def test_missing_index_and_missing_models_are_clear_errors(exported, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HubError, match="no index.json"):
        hub.load("dino-vit", hub=tmp_path / "empty")
    with pytest.raises(HubError, match="does not exist"):
        hub.load("dino-vit", hub=tmp_path / "nowhere")
    with pytest.raises(HubError, match="no model 'nope'.*available: dino-vit"):
        hub.load("nope", hub=exported["hub"])
    server, url = serve(tmp_path / "empty")
    try:
        with pytest.raises(HubError, match="HTTP 404"):
            hub.load("dino-vit", hub=url, cache_dir=tmp_path / "cache")
    finally:
        stop(server)
    monkeypatch.delenv("SSL_ZOO_HUB", raising=False)
    with pytest.raises(HubError, match=r"no hub given.*SSL_ZOO_HUB"):
        hub.load("dino-vit")


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".hidden", "a\\b", "", "x" * 200, "/etc/passwd"])
def test_names_with_path_separators_or_dots_are_rejected(bad):
    with pytest.raises(HubError, match="invalid hub model name"):
        check_name(bad)


@pytest.mark.parametrize("bad", ["../outside", "a/../../b", "/abs/path", "http://evil.example/x", "C:\\x", "", ".", 5])
def test_index_entries_pointing_outside_the_hub_are_rejected(bad):
    with pytest.raises(HubError, match="outside the hub"):
        check_location(bad, "m")
    text = json.dumps({"format": "ssl-zoo-hub/1", "models": {"m": {"path": bad}}})
    with pytest.raises(HubError, match="outside the hub"):
        parse_index(text, "index.json")


def test_export_rejects_traversal_names_and_writes_nothing(exported, tmp_path):
    hub_dir = tmp_path / "hub"
    with pytest.raises(HubError, match="invalid hub model name"):
        export(exported["runs"]["simclrv2-r18"]["run_dir"], "../escaped", hub_dir)
    assert not (tmp_path / "escaped").exists() and not hub_dir.exists()


def test_symlink_out_of_the_hub_is_rejected(exported, tmp_path):
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(exported["hub"] / "dino-vit", outside)
    (hub_dir / "link").symlink_to(outside)
    (hub_dir / "index.json").write_text(json.dumps({"format": "ssl-zoo-hub/1", "models": {"dino-vit": {"path": "link"}}}))
    with pytest.raises(HubError, match="outside the hub"):
        hub.load("dino-vit", hub=hub_dir)


def test_export_refuses_to_overwrite_unless_asked(exported):
    run_dir = exported["runs"]["mae-vit"]["run_dir"]
    with pytest.raises(HubError, match="already exists"):
        export(run_dir, "mae-vit", exported["hub"])
    export(run_dir, "mae-vit", exported["hub"], overwrite=True)
    assert_same_features(hub.load("mae-vit", hub=exported["hub"]), exported, "mae-vit")


def test_interrupted_download_resumes_with_range(exported, tmp_path):
    source = exported["hub"] / "dino-vit/model.safetensors"
    data = source.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "cache/model.safetensors"
    dest.parent.mkdir()
    (dest.parent / "model.safetensors.part").write_bytes(data[: len(data) // 2])
    RangeHandler.sent = 0
    server, url = serve(exported["hub"], RangeHandler)
    try:
        download(f"{url}/dino-vit/model.safetensors", dest, sha256=sha, progress=False)
    finally:
        stop(server)
    assert dest.read_bytes() == data and RangeHandler.sent == len(data) - len(data) // 2


def test_server_without_range_restarts_the_download(exported, tmp_path):
    data = (exported["hub"] / "dino-vit/model.safetensors").read_bytes()
    dest = tmp_path / "model.safetensors"
    (tmp_path / "model.safetensors.part").write_bytes(b"stale bytes from another file")
    server, url = serve(exported["hub"])  # SimpleHTTPRequestHandler answers Range with 200 + whole file
    try:
        download(f"{url}/dino-vit/model.safetensors", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    finally:
        stop(server)
    assert dest.read_bytes() == data


def test_torch_hub_lists_and_loads_every_entry(exported, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_ZOO_HUB", str(exported["hub"]))
    # torch.hub.list takes GitHub repos only: present this checkout as torch.hub's cached clone of one
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    (tmp_path / "torch_hub").mkdir()
    (tmp_path / "torch_hub/ssl-zoo_ssl-zoo_main").symlink_to(ROOT)
    assert sorted(torch.hub.list("ssl-zoo/ssl-zoo:main", trust_repo=True)) == sorted(RUNS)
    for name in RUNS:
        model = torch.hub.load(str(ROOT), name, source="local", pretrained=True)
        assert_same_features(model, exported, name)
    assert "pretrained with dino" in torch.hub.help("ssl-zoo/ssl-zoo:main", "dino-vit", trust_repo=True)


def test_hf_hub_loads_offline_from_a_local_hf_cache(exported, tmp_path):
    """huggingface_hub's cache layout, HF_HUB_OFFLINE=1: no network is touched."""
    snapshot = tmp_path / "hf/models--ssl-zoo--dino-vit/snapshots" / ("a" * 40)
    shutil.copytree(exported["hub"] / "dino-vit", snapshot)
    (tmp_path / "hf/models--ssl-zoo--dino-vit/refs").mkdir()
    (tmp_path / "hf/models--ssl-zoo--dino-vit/refs/main").write_text("a" * 40)
    torch.save(exported["x"], tmp_path / "x.pt")
    script = (f"import torch, ssl_zoo.hub as h; x = torch.load({str(tmp_path / 'x.pt')!r}); "
              f"m = h.load('hf-hub:ssl-zoo/dino-vit').eval(); torch.save(m(x).detach(), {str(tmp_path / 'y.pt')!r}); "
              "import timm; t = timm.create_model('hf-hub:ssl-zoo/dino-vit', pretrained=True).eval(); "
              "assert torch.allclose(t(x), m(x), atol=1e-5)\n"
              "try:\n h.load('hf-hub:ssl-zoo/not-cached')\nexcept h.HubError as e:\n print('HubError:', e)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "HubError: cannot get hf-hub:ssl-zoo/not-cached" in out.stdout
    expected = exported["runs"]["dino-vit"]["features"]
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)


def test_cli_export_list_info_download(exported, tmp_path, capsys):
    hub_dir = tmp_path / "hub"
    run_dir = exported["runs"]["simclrv2-r18"]["run_dir"]
    assert cli_main(["export", str(run_dir), "--name", "r18", "--hub", str(hub_dir)]) == 0
    assert cli_main(["hub", "list", "--hub", str(hub_dir)]) == 0
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()[-2:]
    assert header.split() == ["name", "architecture", "method", "dataset", "k-NN", "top-1", "size"]
    assert row.split()[:4] == ["r18", "resnet18", "simclrv2", "synthetic"] and row.endswith("MiB")
    assert cli_main(["hub", "info", "r18", "--hub", str(hub_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "resnet18" and info["method"] == "simclrv2" and info["steps"] == 2
    server, url = serve(hub_dir)
    try:
        assert cli_main(["hub", "info", "r18", "--hub", url, "--cache-dir", str(tmp_path / "info")]) == 0
        assert json.loads(capsys.readouterr().out)["sha256"] == info["sha256"]
        assert not list((tmp_path / "info").rglob("model.safetensors"))  # info fetches the config only
        assert cli_main(["hub", "download", "r18", "--hub", url, "--cache-dir", str(tmp_path / "c")]) == 0
    finally:
        stop(server)
    folder = Path(capsys.readouterr().out.strip())
    assert folder.is_relative_to(tmp_path / "c") and (folder / "model.safetensors").is_file()
    assert cli_main(["export", str(run_dir), "--name", "../x", "--hub", str(hub_dir)]) == 2
    assert "invalid hub model name" in capsys.readouterr().err


def dropping(drop_at: int, announce: bool = True) -> type:
    return type("Dropping", (DroppingHandler,), {"drop_at": drop_at, "announce": announce, "sent": 0})


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "index-size"])
def test_dropped_connection_keeps_the_part_and_the_rerun_resumes(tmp_path, announce):
    data = os.urandom(3_000_000)
    (tmp_path / "served").mkdir()
    (tmp_path / "served/w.bin").write_bytes(data)
    dest = tmp_path / "cache/w.bin"
    sha, size = hashlib.sha256(data).hexdigest(), None if announce else len(data)
    handler = dropping(1_200_000, announce)
    server, url = serve(tmp_path / "served", handler)
    try:
        with pytest.raises(HubError, match=rf"^downloading {url}/w.bin: connection lost at 1.2 of 3.0 MB: rerun to "
                                           r"resume \(the partial file .*w.bin.part is kept\)$"):
            download(f"{url}/w.bin", dest, sha256=sha, progress=False, size=size)
        assert not dest.exists() and (tmp_path / "cache/w.bin.part").read_bytes() == data[:1_200_000]
        download(f"{url}/w.bin", dest, sha256=sha, progress=False, size=size)  # the rerun
    finally:
        stop(server)
    assert dest.read_bytes() == data and handler.sent == len(data) - 1_200_000  # only the rest was sent
    assert not (tmp_path / "cache/w.bin.part").exists()


def tiny_hub(root: Path, digests: bool = True, **config) -> Path:
    """A hub with one model 'm' (a real safetensors file of about 1.2 MB) written by hand: no training."""
    from safetensors.torch import save_file

    folder = root / "m"
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(300_000, dtype=torch.float32)}, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    meta = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)} if digests else {}
    doc = {"architecture": "test_vit", "pretrained_cfg": {}, "ssl_zoo": dict(meta), **config}
    (folder / "config.json").write_text(json.dumps(doc))
    (root / "index.json").write_text(json.dumps({"format": "ssl-zoo-hub/1", "models": {"m": {"path": "m", **meta}}}))
    return root


def test_cli_download_interrupted_then_resumed_installs_only_verified_weights(tmp_path, capsys):
    hub_dir = tiny_hub(tmp_path / "hub")
    size = (hub_dir / "m/model.safetensors").stat().st_size
    handler = dropping(size // 2)
    server, url = serve(hub_dir, handler)
    args = ["hub", "download", "m", "--hub", url, "--cache-dir", str(tmp_path / "cache")]
    try:
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert f"connection lost at {size // 2 / 1e6:.1f} of {size / 1e6:.1f} MB: rerun to resume" in err
        assert not list((tmp_path / "cache").rglob("model.safetensors"))
        assert [p.stat().st_size for p in (tmp_path / "cache").rglob("model.safetensors.part")] == [size // 2]
        assert cli_main(args) == 0
    finally:
        stop(server)
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "model.safetensors").read_bytes() == (hub_dir / "m/model.safetensors").read_bytes()
    assert handler.sent == size - size // 2


def test_weights_without_any_sha256_are_refused_not_installed(tmp_path, capsys):
    hub_dir = tiny_hub(tmp_path / "hub", digests=False)
    server, url = serve(hub_dir)
    try:
        assert cli_main(["hub", "download", "m", "--hub", url, "--cache-dir", str(tmp_path / "cache")]) == 2
        with pytest.raises(HubError, match=r"^http://.*/m/model.safetensors has no sha256 in the hub index or in its "
                                           r"config.json: refusing to install weights that cannot be verified$"):
            hub.load(f"{url}/m", cache_dir=tmp_path / "cache")  # a model-folder URL: no index at all
    finally:
        stop(server)
    assert "refusing to install weights" in capsys.readouterr().err
    assert not list((tmp_path / "cache").rglob("model.safetensors*"))


@pytest.mark.parametrize("config, message", [
    ({"architecture": 5}, r"field 'architecture' must be a timm model name \(a string\), got 5"),
    ({"architecture": "resnet_18"}, r"field 'architecture': timm \S+ does not know 'resnet_18'; the closest timm "
                                    r"name is 'resnet18'$"),
    ({"architecture": "totally_unknown"}, r"field 'architecture': timm \S+ does not know 'totally_unknown'$"),
    ({"model_args": [1, 2]}, r"field 'model_args' must be an object of constructor arguments, got \[1, 2\]$"),
    ({"pretrained_cfg": "imagenet"}, r"field 'pretrained_cfg' must be an object \(timm's pretrained_cfg\), got 'imagenet'$"),
    ({"ssl_zoo": {"stem": "wide"}}, r"field 'ssl_zoo.stem' must be one of imagenet, cifar, no_maxpool, no_layer_scale, "
                                    r"got 'wide'$"),
    ({"ssl_zoo": {"sha256": "abc"}}, r"field 'ssl_zoo.sha256' must be a sha256 \(64 lowercase hex digits\), got 'abc'$"),
    ({"model_args": {"depthh": 2}}, r"field 'model_args' does not fit test_vit: .*unexpected keyword argument 'depthh'$"),
])
def test_malformed_model_config_is_one_line_naming_file_and_field(tmp_path, config, message):
    hub_dir = tiny_hub(tmp_path / "hub", digests=False, **config)
    with pytest.raises(HubError, match=rf"^{re.escape(str(hub_dir / 'm'))}/config.json: {message}"):
        hub.load("m", hub=hub_dir)


def test_config_json_missing_fields_or_not_an_object(tmp_path):
    folder = tiny_hub(tmp_path / "hub") / "m"
    (folder / "config.json").write_text(json.dumps({"architecture": "test_vit"}))
    with pytest.raises(HubError, match=r"config.json lacks pretrained_cfg, ssl_zoo: not an ssl-zoo export$"):
        hub.load(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(HubError, match=r"config.json: expected a JSON object, got list$"):
        hub.load(folder)


@pytest.mark.parametrize("entry, message", [
    ({"sha256": "ABC"}, r"^index.json: entry 'm' field 'sha256' must be a sha256 \(64 lowercase hex digits\), got 'ABC'$"),
    ({"size_bytes": "12"}, r"^index.json: entry 'm' field 'size_bytes' must be a whole number of bytes, got '12'$"),
])
def test_index_entry_digest_and_size_are_checked(entry, message):
    with pytest.raises(HubError, match=message):
        parse_index(json.dumps({"format": "ssl-zoo-hub/1", "models": {"m": {"path": "m", **entry}}}), "index.json")
