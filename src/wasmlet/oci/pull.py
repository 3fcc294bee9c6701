"""Pulls: a reference's module into the store, as ``imagePullPolicy`` says, within a deadline.

:func:`ensure_module` is what the pod controller and the ``oci_pull`` / ``wasm_run`` modules call;
a whole pull, every request of it, runs under ``--image-pull-timeout`` (:mod:`wasmlet.oci.limits`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection
from pathlib import Path

from wasmlet.oci import limits
from wasmlet.oci.client import RegistryClient, RegistryOptions, merge_options
from wasmlet.oci.credentials import Keyring, RegistryAuth, credentials_for
from wasmlet.oci.errors import ImageNeverPullError, PullError
from wasmlet.oci.reference import PULL_POLICIES, PullPolicy, Reference, as_reference
from wasmlet.oci.store import ModuleStore, PulledModule

log = logging.getLogger(__name__)


def never_pulled(ref: Reference, store: ModuleStore) -> ImageNeverPullError:
    """kubelet's answer for ``imagePullPolicy: Never`` when the image is not there -- and when it
    is, but the pod may not use it (kubelet does not reveal that it is stored)."""
    return ImageNeverPullError(
        f'container image "{ref}" is not present with pull policy of Never '
        f"(registry {ref.registry}; not in the module store at {store.entry_dir(ref)}): "
        "pull it first, or set imagePullPolicy to IfNotPresent",
        reference=str(ref),
        registry=ref.registry,
        cause="not present with pull policy of Never",
    )


def pull_module(client: RegistryClient, ref: Reference, store: ModuleStore) -> PulledModule:
    """Download ``ref`` into the store (unless the store already has what it resolves to)."""
    started = time.monotonic()
    resolved = client.resolve_module(ref)
    with store.locked(ref):
        current = store.lookup(ref)
        if current is not None and current.digest == resolved.digest:
            return current  # another thread or process pulled it meanwhile
        with contextlib.closing(client.blob_chunks(ref, resolved.layer)) as chunks:
            module = store.write(ref, resolved.digest, resolved.layer, chunks)
    log.info(
        "pulled %s (%s, layer %s, %d bytes) in %.2fs",
        ref,
        resolved.digest,
        resolved.layer.media_type,
        module.size,
        time.monotonic() - started,
    )
    return module


def ensure_module(
    reference: str | Reference,
    policy: PullPolicy | str = "IfNotPresent",
    auth: RegistryAuth | Keyring | None = None,
    *,
    store: ModuleStore | None = None,
    options: RegistryOptions | None = None,
    insecure_registries: Collection[str] | None = None,
    ca_file: Path | str | None = None,
    client: RegistryClient | None = None,
) -> PulledModule:
    """Make the module for ``reference`` present in the store, following ``imagePullPolicy``.

    - ``IfNotPresent``: a stored module is returned as is (no network); else it is pulled.
    - ``Always``: the manifest digest is resolved (HEAD); the module is downloaded only if the
      store has none or a different digest. The registry is always asked, as the kubelet does.
    - ``Never``: the stored module, or :class:`ImageNeverPullError`.

    ``auth`` is one registry's credentials, or a pod's :class:`Keyring` (looked up for the
    image's registry). ``insecure_registries`` and ``ca_file`` add to ``options``. ``client``
    lets callers reuse one :class:`RegistryClient` (connections, bearer tokens); otherwise one is
    made. ``pulled`` in the result says whether bytes were downloaded.
    """
    ref = as_reference(reference)
    if policy not in PULL_POLICIES:
        raise ValueError(f"imagePullPolicy must be one of {', '.join(PULL_POLICIES)}, not {policy!r}")
    store = store or ModuleStore()
    cached = store.lookup(ref)
    if policy == "Never":
        if cached is not None:
            return cached
        raise never_pulled(ref, store)
    if policy == "IfNotPresent" and cached is not None:
        return cached
    merged = merge_options(options, insecure_registries, ca_file)
    with _pull_deadline(merged):
        if client is not None:
            client.check_ref(ref)
            return _ensure_with(client, ref, cached, store)
        credentials = credentials_for(auth, ref, PullError)
        with RegistryClient.for_registry(ref.registry, credentials, merged) as own_client:
            return _ensure_with(own_client, ref, cached, store)


def _pull_deadline(options: RegistryOptions) -> contextlib.AbstractContextManager[object]:
    """``options.pull_timeout`` as the deadline of this pull, unless one is already running."""
    if options.pull_timeout is None or limits.current() is not None:
        return contextlib.nullcontext()
    return limits.PullDeadline(options.pull_timeout).active()


def _ensure_with(
    client: RegistryClient, ref: Reference, cached: PulledModule | None, store: ModuleStore
) -> PulledModule:
    if cached is not None and client.resolve(ref) == cached.digest:
        return cached
    return pull_module(client, ref, store)
