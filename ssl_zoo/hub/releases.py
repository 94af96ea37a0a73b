"""The index of officially released checkpoints: published URLs, pinned on first download.

The publishers list no checksums, so trust is on first use: the first download of a release
records its sha256 in `<cache>/official/sha256.json` (keyed by the published URL), and every
later download or cached copy must match it; `--sha256` pins a digest obtained elsewhere before
the first download. A mirror (`--mirror` or $SSL_ZOO_OFFICIAL_MIRROR) serves the same files
under `<mirror>/<host>/<path>` for offline clusters; its files are checked against the same pins.
Google Drive and unverified Hugging Face file names (PixPro, SiT, SatMAE++) are not listed: they
are not plain downloads, so those releases are imported from a local file.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ssl_zoo.checkpoint import atomic_write_json
from ssl_zoo.hub.download import download, sha256_file
from ssl_zoo.hub.index import HubError, check_name

MIRROR_ENV = "SSL_ZOO_OFFICIAL_MIRROR"
PINS_FILE = "sha256.json"


@dataclass(frozen=True)
class Release:
    """One released file: what `import-official` needs to convert it."""

    format: str
    url: str
    key: str = "teacher"  # network of multi-network checkpoints
    note: str = ""

    @property
    def file_name(self) -> str:
        return check_name(Path(urllib.parse.urlparse(self.url).path).name)


def _dino() -> dict[str, Release]:
    base = "https://dl.fbaipublicfiles.com/dino"
    out = {}
    for short, name in [("vits16", "dino_deitsmall16_pretrain"), ("vits8", "dino_deitsmall8_pretrain"),
                        ("vitb16", "dino_vitbase16_pretrain"), ("vitb8", "dino_vitbase8_pretrain"),
                        ("resnet50", "dino_resnet50_pretrain")]:
        out[f"dino_{short}"] = Release("dino", f"{base}/{name}/{name}.pth", note="backbone (teacher weights)")
        out[f"dino_{short}_full"] = Release("dino", f"{base}/{name}/{name}_full_checkpoint.pth",
                                            note="full training checkpoint")
    return out


def _mae() -> dict[str, Release]:
    base = "https://dl.fbaipublicfiles.com/mae"
    out = {}
    for size in ("base", "large", "huge"):
        out[f"mae_vit{size[0]}16"] = Release("mae", f"{base}/pretrain/mae_pretrain_vit_{size}.pth", note="encoder")
        out[f"mae_vit{size[0]}16_full"] = Release("mae", f"{base}/pretrain/mae_pretrain_vit_{size}_full.pth",
                                                  note="encoder + decoder")
    return out


def _dinov2() -> dict[str, Release]:
    base = "https://dl.fbaipublicfiles.com/dinov2"
    out = {}
    for size in ("s", "b", "l", "g"):
        for suffix in ("", "_reg4"):
            name = f"dinov2_vit{size}14{suffix}"
            out[name] = Release("dinov2", f"{base}/dinov2_vit{size}14/{name}_pretrain.pth")
    return out


def _croco() -> dict[str, Release]:
    base = "https://download.europe.naverlabs.com/ComputerVision/CroCo"
    return {
        "croco_v1_vitb": Release("croco", f"{base}/CroCo.pth", note="v1, cosine positions"),
        "croco_v2_vitb_smalldec": Release("croco", f"{base}/CroCo_V2_ViTBase_SmallDecoder.pth", note="v2, RoPE"),
        "croco_v2_vitb_basedec": Release("croco", f"{base}/CroCo_V2_ViTBase_BaseDecoder.pth", note="v2, RoPE"),
        "croco_v2_vitl_basedec": Release("croco", f"{base}/CroCo_V2_ViTLarge_BaseDecoder.pth", note="v2, RoPE"),
    }


RELEASES: dict[str, Release] = {**_dino(), **_mae(), **_dinov2(), **_croco()}


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise HubError(f"unknown official release {name!r}; known: {', '.join(sorted(RELEASES))} "
                       "(or pass the path of a file you already have)")
    return RELEASES[name]


def mirrored(url: str, mirror: str | None) -> str:
    """The URL to fetch: the published one, or `<mirror>/<host>/<path>`."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    parsed = urllib.parse.urlparse(url)
    return f"{mirror.rstrip('/')}/{parsed.netloc}{parsed.path}"


def pins_path(cache: Path) -> Path:
    return cache / "official" / PINS_FILE


def read_pins(cache: Path) -> dict[str, str]:
    path = pins_path(cache)
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HubError(f"{path} is not valid JSON ({e}); fix or delete it (deleting forgets every pin)") from e
    if not isinstance(pins, dict):
        raise HubError(f"{path} is not a mapping of URL -> sha256")
    return pins


def pin(cache: Path, url: str, sha256: str) -> None:
    pins = read_pins(cache)
    pins[url] = sha256
    atomic_write_json(pins, pins_path(cache), sort_keys=True)


def fetch_release(name: str, cache: Path, mirror: str | None = None, sha256: str | None = None,
                  progress: bool = True) -> Path:
    """The release's file in the cache, downloaded if needed and checked against its pin.

    With no pin yet, the digest of the first download becomes the pin (or `sha256` does, if given
    and the file matches it). A given `sha256` that contradicts an existing pin is an error."""
    release = get_release(name)
    pinned = read_pins(cache).get(release.url)
    if sha256 and pinned and sha256.lower() != pinned:
        raise HubError(f"--sha256 {sha256} contradicts the pin {pinned} recorded for {release.url} in "
                       f"{pins_path(cache)}; remove that entry if the publisher really changed the file")
    expected = (sha256 or "").lower() or pinned
    dest = cache / "official" / name / release.file_name
    if expected is None and dest.is_file():
        dest.unlink()  # a file without a pin was never verified: fetch it again
    try:
        download(mirrored(release.url, mirror), dest, sha256=expected, progress=progress)
    except HubError as e:
        if expected and "sha256 mismatch" in str(e):
            raise HubError(f"{e}. The pin for {name} comes from {'--sha256' if sha256 else pins_path(cache)}") from e
        raise
    if pinned is None:
        pin(cache, release.url, expected or sha256_file(dest))
    return dest


def resolve_official(source: str, fmt: str | None, key: str | None, cache: Path, mirror: str | None = None,
                     sha256: str | None = None, progress: bool = True) -> tuple[Path, str, str, str | None]:
    """(file, format, key, published URL) for `import-official SOURCE`: a local file as given (its
    --format required), or a release name from the index (downloaded; --format, if given, must agree)."""
    if Path(source).exists() or source not in RELEASES:
        if sha256:
            raise HubError("--sha256 pins a release download; for a local file compare `sha256sum FILE` yourself")
        if not fmt and not Path(source).exists():
            raise HubError(f"{source!r} is neither a file nor an official release name: pass a file's path with "
                           f"--format, or one of: {', '.join(sorted(RELEASES))}")
        if not fmt:
            raise HubError(f"--format is required for the file {source}")
        return Path(source), fmt, key or "teacher", None
    release = RELEASES[source]
    if fmt and fmt != release.format:
        raise HubError(f"--format {fmt!r} contradicts the release {source!r}, which is a {release.format!r} checkpoint")
    path = fetch_release(source, cache, mirror, sha256, progress)
    return path, release.format, key or release.key, release.url
