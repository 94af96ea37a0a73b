"""Where hub models come from: a local hub folder, `file://`, `http(s)://`, or `hf-hub:org/name`.

Every source ends as a local model folder (`config.json` + `model.safetensors`): local hubs are
read in place, remote ones are downloaded into the cache first.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from ssl_zoo.cache import cache_root
from ssl_zoo.hub.download import download, read_url
from ssl_zoo.hub.index import INDEX_FILE, HubError, check_name, model_folder, parse_index, read_local_index
from ssl_zoo.hub.model_config import CONFIG_FILE, read_model_config

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
HUB_ENV = "SSL_ZOO_HUB"
def hub_location(hub: str | Path | None) -> str:
    location = hub or os.environ.get(HUB_ENV)
    if not location:
        raise HubError(f"no hub given: pass --hub (hub=) a folder or URL, or set ${HUB_ENV}")
    return str(location)


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class LocalHub:
    """A hub folder on this machine (also what a `file://` URL names)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __str__(self) -> str:
        return str(self.root)

    def index(self) -> dict:
        if not self.root.is_dir():
            raise HubError(f"hub folder {self.root} does not exist")
        return read_local_index(self.root)

    def fetch(self, name: str, entry: dict, cache: Path, progress: bool, weights: bool = True) -> Path:
        return model_folder(self.root, name, entry)


class HttpHub:
    """A hub served over HTTP(S): the same folder layout under a base URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/"

    def __str__(self) -> str:
        return self.url

    def index(self) -> dict:
        url = self.url + INDEX_FILE
        return parse_index(read_url(url).decode(), url)

    def cache_folder(self, name: str, cache: Path) -> Path:
        return cache / "hubs" / _url_key(self.url) / name

    def fetch(self, name: str, entry: dict, cache: Path, progress: bool, weights: bool = True) -> Path:
        base = self.url + urllib.parse.quote(entry["path"].strip("/")) + "/"
        return fetch_folder(base, self.cache_folder(name, cache), entry, progress, weights)


def open_hub(hub: str | Path | None) -> LocalHub | HttpHub:
    location = hub_location(hub)
    scheme = urllib.parse.urlparse(location).scheme
    if scheme in ("http", "https"):
        return HttpHub(location)
    if scheme == "file":
        return LocalHub(Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path)))
    if "://" in location:
        raise HubError(f"unsupported hub URL {location!r}: use a folder, file://, http:// or https://")
    return LocalHub(Path(location).expanduser())


def fetch_folder(base_url: str, dest: Path, entry: dict, progress: bool, weights: bool = True) -> Path:
    """Download one model folder (config, weights unless not wanted, card) from `base_url` into `dest`.

    The weights are installed only once their sha256 matches the index `entry`'s, else the one their
    config.json records; a model with neither is refused, never installed unverified. The expected size
    (same sources) tells a dropped connection from a bad file."""
    download(base_url + CONFIG_FILE, dest / CONFIG_FILE, progress=False)
    if weights:
        meta = read_model_config(dest)["ssl_zoo"]
        sha256 = entry.get("sha256") or meta.get("sha256")
        if not sha256:
            raise HubError(f"{base_url}{WEIGHTS_FILE} has no sha256 in the hub index or in its {CONFIG_FILE}: "
                           "refusing to install weights that cannot be verified")
        download(base_url + WEIGHTS_FILE, dest / WEIGHTS_FILE, sha256=sha256, progress=progress,
                 size=entry.get("size_bytes") or meta.get("size_bytes"))
    try:
        download(base_url + CARD_FILE, dest / CARD_FILE, progress=False)
    except HubError:
        pass  # the model card is documentation; weights and config are what loading needs
    return dest


def fetch_hf(repo: str, revision: str | None, weights: bool = True) -> Path:
    """The snapshot folder of `org/name` through huggingface_hub (its cache; offline from it)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        config = hf_hub_download(repo, CONFIG_FILE, revision=revision)
        if weights:
            hf_hub_download(repo, WEIGHTS_FILE, revision=revision)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise HubError(f"cannot get hf-hub:{repo} ({type(e).__name__}: {e}). Offline, the files must already "
                       "be in the Hugging Face cache ($HF_HUB_CACHE)") from e
    return Path(config).parent


def resolve(spec: str | Path, hub: str | Path | None = None, cache_dir: str | Path | None = None,
            progress: bool = True, weights: bool = True) -> tuple[Path, str | None]:
    """A local model folder for a name, folder, URL or `hf-hub:` id, and the sha256 the index expects.

    `weights=False` fetches only config.json and the card from remote sources (`hub info`).
    """
    text = str(spec)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:"):].partition("@")
        return fetch_hf(repo, revision or None, weights), None
    scheme = urllib.parse.urlparse(text).scheme
    if scheme in ("http", "https"):
        folder = cache_root(cache_dir) / "urls" / _url_key(text.rstrip("/"))
        return fetch_folder(text.rstrip("/") + "/", folder, {}, progress, weights), None
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path)), None
    if isinstance(spec, Path) or os.sep in text or (Path(text) / CONFIG_FILE).is_file():
        return Path(text).expanduser(), None
    check_name(text)
    source = open_hub(hub)
    try:
        models = source.index()["models"]
    except HubError:
        if not isinstance(source, HttpHub):
            raise
        cached = source.cache_folder(text, cache_root(cache_dir))
        if not ((cached / CONFIG_FILE).is_file() and (cached / WEIGHTS_FILE).is_file()):
            raise
        warnings.warn(f"hub {source} is unreachable; using the cached copy of {text!r} in {cached}")
        return cached, None  # still checked against the sha256 in its config.json
    if text not in models:
        raise HubError(f"no model {text!r} in hub {source}; available: {', '.join(sorted(models)) or 'none'}")
    entry = models[text]
    return source.fetch(text, entry, cache_root(cache_dir), progress, weights), entry.get("sha256")
