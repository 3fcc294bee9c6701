"""The module store: Krustlet's layout on disk, one pulled module per reference.

``<root>/<registry>/<repository>/<tag or sha256_hex>/module.wasm`` and ``digest.txt``, the commit
record, written last (the layout and the crash rules: docs/oci.md).

``access.json`` says who may use a module the node pulled, as kubelet's pulled-image records
(KubeletEnsureSecretPulledImages, on by default since v1.35): anyone, when it was pulled with no
credentials, else the holders of the credentials it was pulled with (their SHA-256 only). A
module stored with no record (preloaded, say by ``oci_pull``) is anyone's, as kubelet's default
``NeverVerifyPreloadedImages``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from wasmlet import paths
from wasmlet.fsutil import PUBLIC_MODE, write_atomic
from wasmlet.oci.errors import DigestMismatchError
from wasmlet.oci.reference import Reference, as_reference

if TYPE_CHECKING:
    from wasmlet.oci.client import RegistryClient, RegistryOptions
    from wasmlet.oci.credentials import Keyring, RegistryAuth
    from wasmlet.oci.manifest import Descriptor

MODULE_FILE: Final = "module.wasm"
DIGEST_FILE: Final = "digest.txt"
LOCK_FILE: Final = ".lock"
ACCESS_FILE: Final = "access.json"
ANYONE: Final = ""  # the access identity of a pull with no credentials


def default_store_root() -> Path:
    return paths.home() / ".oci" / "modules"


@dataclass(frozen=True)
class PulledModule:
    path: Path
    digest: str
    size: int
    pulled: bool


def _fs_name(text: str) -> str:
    return text.replace(":", "_")


class ModuleStore:
    """Krustlet's on-disk module store (the layout: docs/oci.md, "The module store")."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_store_root()

    def entry_dir(self, reference: str | Reference) -> Path:
        ref = as_reference(reference)
        leaf = _fs_name(ref.digest) if ref.digest else ref.tag or "latest"
        return self.root / _fs_name(ref.registry) / ref.repository / leaf

    def lookup(self, reference: str | Reference) -> PulledModule | None:
        """The stored module, or None: one stat and one small read, no network, no JSON."""
        ref = as_reference(reference)
        entry = self.entry_dir(ref)
        module = entry / MODULE_FILE
        try:
            size = module.stat().st_size
            digest = (entry / DIGEST_FILE).read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not digest or (ref.digest and digest != ref.digest):
            return None
        return PulledModule(path=module, digest=digest, size=size, pulled=False)

    def may_use(self, stored: PulledModule, who: Callable[[], str]) -> bool:
        """Whether a pod presenting the credentials ``who()`` names (asked only when it matters:
        :func:`~wasmlet.oci.credentials.access_identity`) may use ``stored`` without asking the
        registry: it was preloaded, pulled with no credentials, or pulled with these. A record
        of another digest (the tag moved since) grants nothing."""
        try:
            record = json.loads((stored.path.parent / ACCESS_FILE).read_bytes())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("digest") != stored.digest:
            return False
        granted = record.get("credentials")
        return record.get("anonymous") is True or (isinstance(granted, list) and who() in granted)

    def record_access(self, ref: Reference, stored: PulledModule, who: str) -> None:
        """``who`` pulled ``stored`` (as ``ref``) from the registry: it may use it from now on."""
        with self.locked(ref) as entry:
            path = entry / ACCESS_FILE
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError):
                record = {}
            if not isinstance(record, dict) or record.get("digest") != stored.digest:
                record = {"digest": stored.digest, "anonymous": False, "credentials": []}
            if who == ANYONE:
                record["anonymous"] = True
            elif who not in record["credentials"]:
                record["credentials"] = [*record["credentials"], who][-64:]
            write_atomic(path, json.dumps(record, sort_keys=True).encode(), 0o600)

    def has(self, reference: str | Reference) -> bool:
        return self.lookup(reference) is not None

    def ensure(
        self,
        reference: str | Reference,
        policy: str = "IfNotPresent",
        auth: RegistryAuth | Keyring | None = None,
        *,
        options: RegistryOptions | None = None,
        insecure_registries: Collection[str] | None = None,
        ca_file: Path | str | None = None,
        client: RegistryClient | None = None,
    ) -> PulledModule:
        """:func:`~wasmlet.oci.pull.ensure_module` with this store."""
        from wasmlet.oci.pull import ensure_module  # here: pull imports this module

        return ensure_module(
            reference,
            policy,
            auth,
            store=self,
            options=options,
            insecure_registries=insecure_registries,
            ca_file=ca_file,
            client=client,
        )

    @contextlib.contextmanager
    def locked(self, ref: Reference) -> Iterator[Path]:
        """Hold the entry's lock (``flock``: across threads and processes sharing the store)."""
        entry = self.entry_dir(ref)
        entry.mkdir(parents=True, exist_ok=True)
        fd = os.open(entry / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PUBLIC_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield entry
        finally:
            os.close(fd)

    def write(self, ref: Reference, digest: str, layer: Descriptor, chunks: Iterable[bytes]) -> PulledModule:
        """Store a layer streamed from ``chunks`` as ``ref``'s module. Call under :meth:`locked`.

        The bytes must match the layer descriptor's size and digest (else
        :class:`DigestMismatchError` and nothing changes); then ``module.wasm`` is replaced
        atomically and ``digest.txt`` written last.
        """
        entry = self.entry_dir(ref)
        entry.mkdir(parents=True, exist_ok=True)
        for leftover in [*entry.glob(f".{MODULE_FILE}.*"), *entry.glob(f".{DIGEST_FILE}.*")]:
            leftover.unlink(missing_ok=True)  # from a process killed mid-pull; we hold the lock
        algorithm, _sep, expected_hex = layer.digest.partition(":")
        hasher = hashlib.new(algorithm)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{MODULE_FILE}.", dir=entry)
        tmp = Path(tmp_name)
        size = 0

        def mismatch(cause: str) -> DigestMismatchError:
            return DigestMismatchError(
                f"failed to pull {ref} from registry {ref.registry}: {cause}",
                reference=str(ref),
                registry=ref.registry,
                cause=cause,
            )

        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > layer.size:
                        raise mismatch(
                            f"layer {layer.digest} is larger than its descriptor's {layer.size} bytes"
                        )
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = f"{algorithm}:{hasher.hexdigest()}"
            if size != layer.size or hasher.hexdigest() != expected_hex:
                raise mismatch(
                    f"layer digest mismatch: expected {layer.digest} ({layer.size} bytes), "
                    f"received {actual} ({size} bytes)"
                )
            tmp.chmod(PUBLIC_MODE)
            (entry / DIGEST_FILE).unlink(missing_ok=True)
            os.replace(tmp, entry / MODULE_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        write_atomic(entry / DIGEST_FILE, f"{digest}\n".encode())
        dir_fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return PulledModule(path=entry / MODULE_FILE, digest=digest, size=size, pulled=True)
