"""The index of official release downloads: fetched from a real HTTP server on 127.0.0.1 acting as
a mirror of the published URLs, sha256 pinned on the first download and enforced after."""

import json
import re
import urllib.parse
from pathlib import Path

import pytest
import torch

from ssl_zoo.cli import main as cli_main
from ssl_zoo.hub import HubError, load
from ssl_zoo.hub.download import sha256_file
from ssl_zoo.hub.index import check_name
from ssl_zoo.hub.official import FORMATS
from ssl_zoo.hub.releases import RELEASES, fetch_release, mirrored, pins_path, read_pins
from tests.test_hub import dropping, serve, stop
from tests.test_official import layout, same_function, timm_with

RELEASE = "dino_vits16"


def publish(mirror: Path, name: str, state: dict) -> Path:
    """Put `state` where a mirror of the release's published URL serves it."""
    url = urllib.parse.urlparse(RELEASES[name].url)
    path = mirror / url.netloc / url.path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def import_release(tmp_path: Path, *extra: str) -> int:
    return cli_main(["hub", "import-official", RELEASE, "--hub", str(tmp_path / "hub"),
                     "--cache-dir", str(tmp_path / "cache"), *extra])


def test_every_release_names_a_known_format_and_a_plain_https_file():
    assert len({r.url for r in RELEASES.values()}) == len(RELEASES)
    for name, release in RELEASES.items():
        check_name(name)
        assert release.format in FORMATS
        assert release.url.startswith("https://") and release.file_name.endswith(".pth")
    assert mirrored(RELEASES[RELEASE].url, "http://m:1/x/") == \
        "http://m:1/x/dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"


def test_first_download_pins_the_sha256_and_later_downloads_must_match(tmp_path, monkeypatch, capsys):
    state = layout("dino_vit_small_p16_backbone")
    served = publish(tmp_path / "mirror", RELEASE, state)
    server, url = serve(tmp_path / "mirror")
    monkeypatch.setenv("SSL_ZOO_OFFICIAL_MIRROR", url)
    try:
        assert import_release(tmp_path) == 0
    finally:
        stop(server)
    assert f"as {RELEASE}" in capsys.readouterr().out
    published = RELEASES[RELEASE].url
    assert read_pins(tmp_path / "cache") == {published: sha256_file(served)}
    official = json.loads((tmp_path / "hub" / RELEASE / "config.json").read_text())["ssl_zoo"]["official"]
    assert official["url"] == published and official["file_sha256"] == sha256_file(served)
    same_function(load(RELEASE, hub=tmp_path / "hub"), timm_with("vit_small_patch16_224", state), 224)

    # the server is gone: the pinned copy in the cache is enough
    assert import_release(tmp_path, "--name", "again") == 0
    assert cli_main(["hub", "official", "--cache-dir", str(tmp_path / "cache")]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^{RELEASE} +dino +{sha256_file(served)[:16]} +https://", listing, re.M)
    assert re.search(r"^dino_vitb16 +dino +- +https://", listing, re.M)  # not downloaded: no pin

    # the file changes upstream: a fresh download no longer matches the pin
    publish(tmp_path / "mirror", RELEASE, layout("dino_vit_small_p16_backbone", seed=5))
    cached = fetch_release(RELEASE, tmp_path / "cache")
    cached.unlink()
    server, url = serve(tmp_path / "mirror")
    monkeypatch.setenv("SSL_ZOO_OFFICIAL_MIRROR", url)
    try:
        assert import_release(tmp_path, "--name", "changed") == 2
    finally:
        stop(server)
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and str(pins_path(tmp_path / "cache")) in err
    assert not list(cached.parent.iterdir())  # nothing unverified kept
    assert not (tmp_path / "hub" / "changed").exists()


def test_a_given_sha256_is_checked_before_anything_is_pinned(tmp_path):
    served = publish(tmp_path / "mirror", RELEASE, layout("dino_vit_small_p16_backbone"))
    server, url = serve(tmp_path / "mirror")
    try:
        with pytest.raises(HubError, match="sha256 mismatch.*--sha256"):
            fetch_release(RELEASE, tmp_path / "cache", mirror=url, sha256="0" * 64, progress=False)
        assert read_pins(tmp_path / "cache") == {}
        digest = sha256_file(served)
        fetch_release(RELEASE, tmp_path / "cache", mirror=url, sha256=digest.upper(), progress=False)
    finally:
        stop(server)
    assert read_pins(tmp_path / "cache") == {RELEASES[RELEASE].url: digest}
    with pytest.raises(HubError, match="contradicts the pin"):
        fetch_release(RELEASE, tmp_path / "cache", sha256="1" * 64)


def test_unreachable_mirror_unknown_release_and_format_conflicts_are_clear_errors(tmp_path, capsys):
    assert import_release(tmp_path, "--mirror", "http://127.0.0.1:9") == 2
    assert "cannot reach http://127.0.0.1:9/dl.fbaipublicfiles.com/dino/" in capsys.readouterr().err
    assert not pins_path(tmp_path / "cache").exists()
    assert import_release(tmp_path, "--format", "mae") == 2
    assert "contradicts the release 'dino_vits16', which is a 'dino' checkpoint" in capsys.readouterr().err
    assert cli_main(["hub", "import-official", "dino_vitz16", "--hub", str(tmp_path / "hub")]) == 2
    err = capsys.readouterr().err
    assert "neither a file nor an official release name" in err and "dinov2_vitb14_reg4" in err
    file = tmp_path / "mine.pth"
    torch.save(layout("dino_vit_small_p16_backbone"), file)
    assert cli_main(["hub", "import-official", str(file), "--hub", str(tmp_path / "hub"), "--name", "m"]) == 2
    assert f"--format is required for the file {file}" in capsys.readouterr().err
    assert cli_main(["hub", "import-official", str(file), "--format", "dino", "--hub", str(tmp_path / "hub")]) == 2
    assert "--name is required" in capsys.readouterr().err
    assert not list((tmp_path / "cache" / "official").rglob("*.pth*"))  # no partial file left behind
    pins_path(tmp_path / "cache").write_text("{not json")
    with pytest.raises(HubError, match="sha256.json is not valid JSON"):
        fetch_release(RELEASE, tmp_path / "cache")


def test_a_dropped_first_download_pins_nothing_and_the_rerun_resumes(tmp_path):
    """Trust on first use must not trust half a file: the drop is reported, the rerun resumes and pins the whole."""
    served = publish(tmp_path / "mirror", RELEASE, {"w": torch.zeros(500_000)})
    size = served.stat().st_size
    handler = dropping(size // 3)
    server, url = serve(tmp_path / "mirror", handler)
    try:
        with pytest.raises(HubError, match=rf"connection lost at {size // 3 / 1e6:.1f} of {size / 1e6:.1f} MB: "
                                           r"rerun to resume"):
            fetch_release(RELEASE, tmp_path / "cache", mirror=url, progress=False)
        assert read_pins(tmp_path / "cache") == {}
        path = fetch_release(RELEASE, tmp_path / "cache", mirror=url, progress=False)
    finally:
        stop(server)
    assert path.read_bytes() == served.read_bytes() and handler.sent == size - size // 3
    assert read_pins(tmp_path / "cache") == {RELEASES[RELEASE].url: sha256_file(served)}
