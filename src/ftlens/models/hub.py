"""Is the model hub reachable? Asked once per process, so that ``pretrained=True`` offline fails
in well under a second with an :class:`~ftlens.errors.OfflineError` instead of spending about a
minute in the hub client's retries.

Offline (``HF_HUB_OFFLINE=1``, or no TCP connection to the hub within 2 s), the Hugging Face
client is switched to offline mode, so weights already in its cache still load.
"""

from __future__ import annotations

import functools
import os
import socket

HUB_HOST = "huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


@functools.cache
def _probe(host: str, timeout: float) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_online(host: str = HUB_HOST, timeout: float = 2.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or ``host`` cannot be reached (one probe per process).
    Behind an HTTP(S) proxy the direct probe says nothing, so the hub is assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    online = _probe(host, timeout)
    if not online:
        go_offline()
    return online


def go_offline() -> None:
    """Put the Hugging Face client in offline mode (cache only, no retries)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - installed with timm
        pass


def is_network_error(exc: BaseException) -> bool:
    """Whether an exception from a hub client looks like a missing network (many types exist)."""
    text = f"{type(exc).__name__} {exc}".lower()
    keys = ("connect", "resolve", "network", "offline", "timed out", "timeout", "http", "hub", "urlopen",
            "cannot find the requested files", "local_files_only", "couldn't connect")
    return isinstance(exc, (OSError, ConnectionError)) or any(k in text for k in keys)
