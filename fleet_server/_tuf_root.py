"""Root rotation: the one operation that needs the offline root keys again.

TUF 5.3.4: root N+1 must be signed by a threshold of root N's keys *and* a
threshold of its own, so devices that pinned ``1.root.json`` walk the chain
``2.root.json``, ``3.root.json``... and end up trusting the new keys. The keys
are used for this call and dropped, as in ``TufRepository.create``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root

from edgepack import SigningKey, UsageError

from ._tuf import TufRepository, _at
from ._tuf_files import TufRepositoryError, locked
from ._tuf_signer import EdgepackSigner, tuf_key

__all__ = ["rotate_root"]


def rotate_root(repo: TufRepository, old_keys: Sequence[SigningKey], new_keys: Sequence[SigningKey],
                threshold: int, *, now: dt.datetime | None = None) -> int:
    """Write root version N+1 naming ``new_keys`` (with ``threshold``); return N+1.

    Raises:
        UsageError: ``threshold`` does not fit ``new_keys``.
        TufRepositoryError: ``old_keys`` do not meet the current root threshold.
    """
    if not 1 <= threshold <= len(new_keys):
        raise UsageError(f"root threshold {threshold} needs 1..{len(new_keys)} new root keys")
    now = _at(now)
    with locked(repo.dir):
        old_md: Metadata[Root] = repo._open(Root.type)
        new_md: Metadata[Root] = Metadata.from_bytes(old_md.to_bytes())
        root = new_md.signed
        for keyid in list(root.roles[Root.type].keyids):
            root.revoke_key(keyid, Root.type)
        for k in new_keys:
            root.add_key(tuf_key(k.public), Root.type)
        root.roles[Root.type].threshold = threshold
        root.version += 1
        root.expires = now + repo.config.root_lifetime
        new_md.signatures.clear()
        for k in {k.keyid: k for k in [*old_keys, *new_keys]}.values():
            new_md.sign(EdgepackSigner(k), append=True)
        try:
            old_md.signed.verify_delegate(Root.type, new_md.signed_bytes, new_md.signatures)
            root.verify_delegate(Root.type, new_md.signed_bytes, new_md.signatures)
        except UnsignedMetadataError as e:
            raise TufRepositoryError(f"root rotation refused: {e}", where="root",
                                     hint="sign with a threshold of the current root keys and of the new ones") from e
        repo._write(Root.type, new_md)
    return root.version
