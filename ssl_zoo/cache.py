"""The zoo's one cache folder (hub downloads, evaluation features, image-folder indexes).

In the bottom layer, so data loading and the hub find the same folder without one importing the other.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SSL_ZOO_CACHE"


def cache_root(override: str | Path | None = None) -> Path:
    """`override`, else $SSL_ZOO_CACHE, else ~/.cache/ssl_zoo."""
    return Path(override or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssl_zoo").expanduser()
