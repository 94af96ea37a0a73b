"""torch.hub entry points for the models of the hub named by $SSL_ZOO_HUB (a folder or URL).

    SSL_ZOO_HUB=/path/to/hub python -c "import torch; print(torch.hub.list('.', source='local'))"
    torch.hub.load(REPO_DIR, "NAME", source="local", pretrained=True, num_classes=0)
"""

import os as _os

from ssl_zoo.hub.torchhub import entrypoints as _entrypoints

dependencies = ["torch", "timm", "safetensors"]

globals().update(_entrypoints(_os.environ.get("SSL_ZOO_HUB")))
