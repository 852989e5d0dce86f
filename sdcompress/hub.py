"""Whether the Hugging Face hub can be reached, decided fast.

``transformers`` and ``datasets`` retry for half a minute before they give up on an
unreachable hub. We probe once with a short timeout and fail with one sentence instead.
With ``HF_HUB_OFFLINE=1`` the libraries read only their cache, so no probe is needed.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def hub_offline_mode() -> bool:
    """True when the user asked the HF libraries to use only their cache."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the hub opens within ``timeout`` seconds."""
    if hub_offline_mode():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
