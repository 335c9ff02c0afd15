"""An image's runtime config for a reference string, from any process, cheaply.

``image_config("redis:7")`` returns the :class:`~.manifest.ImageConfig` (ENTRYPOINT, CMD, env,
workdir, user, exposed ports) of the image for one platform, and
:func:`~.command.image_command` turns it into a daemon's argv and env the way
``docker run IMAGE [args]`` does.  Together they are what ``Daemon.from_image(name, *,
args=None, ready=None, env=None, restart=False)`` needs::

    config = image_config(reference, platform=platform)        # on the host, once per image
    command = image_command(config, args=args, env=env)        # pure: argv, env, workdir, user

Where the answer comes from, cheapest first:

1. this process's memory (keyed by cache directory, normalised reference and platform);
2. the image cache on disk (:class:`~.store.ImageStore`): a reference resolved before, by a
   pull or by this function, in any process, maps to its manifest and config digests, and the
   config blob is kept there (re-hashed on read).  No network access, so a pulled image costs
   a file read;
3. the registry, through our client: manifest (index first for multi-platform images), then the
   config blob alone, digest-verified and cached as in 2.  Layers are not downloaded.

A tag is resolved once and then served from the cache, as :meth:`ImageStore.get` does;
``pull="always"`` asks the registry again.

For the Modal path the caller passes the platform Modal runs (``platform="linux/amd64"``): the
host's own platform (the default, ``$PYTEST_MODAL_SANDBOX_PLATFORM`` overriding it) is right
for the local runtime only, and a laptop may be arm64.  For a ``modal.Image.from_registry`` the
caller passes the tag it was built from.  Errors are the images' own: :class:`ImageNotFound`
(unknown image or tag, with the tags that exist), :class:`PlatformNotFound`,
:class:`RegistryUnreachable` (naming the fixes), :class:`RegistryAuthError`,
:class:`ImageDigestMismatch`, :class:`ImageReferenceError`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal

from .._paths import cache_root
from .manifest import ImageConfig, Platform, host_platform
from .reference import parse_reference
from .store import ImageStore

__all__ = ["image_config"]

_memo: dict[tuple[str, str, str], ImageConfig] = {}
_memo_lock = threading.Lock()


def image_config(
    reference: str,
    *,
    platform: str | Platform | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    pull: Literal["missing", "always"] = "missing",
    timeout: float = 30.0,
) -> ImageConfig:
    """The runtime config of image ``reference`` for ``platform`` (default: this machine's).

    ``cache_dir`` is the image cache's root as for :class:`ImageStore` (default
    ``$PYTEST_MODAL_SANDBOX_CACHE_DIR`` or ``~/.cache/pytest-modal-sandbox``).
    """
    if pull not in ("missing", "always"):
        raise ValueError(f"pull must be 'missing' or 'always', not {pull!r}")
    ref = parse_reference(reference)
    plat = (
        platform
        if isinstance(platform, Platform)
        else Platform.parse(platform)
        if platform
        else host_platform()
    )
    base = Path(cache_dir) if cache_dir is not None else cache_root()
    key = (str(base.resolve()), str(ref), str(plat))
    if pull == "missing":
        with _memo_lock:
            known = _memo.get(key)
        if known is not None:
            return known
    config = ImageStore(base, platform=plat, timeout=timeout).config(reference, pull=pull)
    with _memo_lock:
        _memo[key] = config
    return config
