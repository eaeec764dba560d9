"""Key files of an HE federation: one key pair the clients share, the public half for the server.

The clients' operators generate the pair among themselves (or one of them does and hands it to
the others over a channel the server does not see) and give the server ``he_public.bin`` only.
Both files are fixed binary formats (raw integers for Paillier, tenseal's own serialisation for
CKKS); nothing is pickled.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Literal

from fedfleet.privacy._he import (
    PAILLIER_SECRET_MAGIC,
    FixedPoint,
    HEError,
    PaillierKeyHolder,
    PaillierPublic,
    _phe,
)
from fedfleet.privacy._he_ckks import (
    CKKS_SECRET_MAGIC,
    CkksKeyHolder,
    CkksPublic,
    _tenseal,
)

__all__ = [
    "PUBLIC_KEY_FILE",
    "SECRET_KEY_FILE",
    "load_key_holder",
    "load_public",
    "write_he_keys",
]

PUBLIC_KEY_FILE = "he_public.bin"
SECRET_KEY_FILE = "he_secret.bin"


def write_he_keys(
    directory: str | Path, scheme: Literal["paillier", "ckks"] = "paillier", key_bits: int = 2048
) -> tuple[Path, Path]:
    """Generate a key pair; write ``he_secret.bin`` (owner-only permissions; for the clients)
    and ``he_public.bin`` (for the server). Returns (public path, secret path).

    Examples:
        >>> public, secret = write_he_keys("he-keys", "paillier")  # doctest: +SKIP
        >>> HEFedAvg(public=load_public(public.read_bytes()), ...)  # doctest: +SKIP
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    holder = (
        PaillierKeyHolder.generate(key_bits=key_bits)
        if scheme == "paillier"
        else CkksKeyHolder.generate()
    )
    secret, public = d / SECRET_KEY_FILE, d / PUBLIC_KEY_FILE
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(holder.secret_bytes())
    public.write_bytes(holder.public.to_bytes())
    return public, secret


def load_key_holder(data: bytes) -> PaillierKeyHolder | CkksKeyHolder:
    """A key holder from the bytes its ``secret_bytes()`` wrote (either scheme)."""
    if data.startswith(PAILLIER_SECRET_MAGIC):
        head = struct.calcsize(">4sIIIH")
        if len(data) >= head:
            _, frac, value, wbits, width = struct.unpack_from(">4sIIIH", data)
            if len(data) == head + 2 * width:
                p = int.from_bytes(data[head : head + width], "big")
                q = int.from_bytes(data[head + width :], "big")
                fp = FixedPoint(frac_bits=frac, value_bits=value, max_weight=2**wbits - 1)
                return PaillierKeyHolder(
                    _phe().PaillierPrivateKey(_phe().PaillierPublicKey(p * q), p, q), fp
                )
        raise HEError("not a Paillier secret key file (bad magic or length)")
    if data.startswith(CKKS_SECRET_MAGIC):
        start = len(CKKS_SECRET_MAGIC) + 8
        try:
            (size,) = struct.unpack_from(">Q", data, len(CKKS_SECRET_MAGIC))
            ctx = _tenseal().context_from(data[start + size :])
        except Exception as err:  # tenseal raises bare errors on bad bytes
            raise HEError(f"malformed CKKS secret key file: {err}") from err
        if not ctx.has_secret_key():
            raise HEError("the CKKS key file holds no secret key")
        return CkksKeyHolder(ctx, data[start : start + size])
    raise HEError("not a fedfleet HE secret key file (unknown magic)")


def load_public(data: bytes) -> PaillierPublic | CkksPublic:
    """The public side from ``public.to_bytes()`` of either scheme (the server's key file;
    a Paillier key is a few hundred bytes, a CKKS context hundreds of kilobytes)."""
    try:
        return PaillierPublic.from_bytes(data) if len(data) < 4096 else CkksPublic(data)
    except HEError:
        raise
    except Exception as err:
        raise HEError(f"not a fedfleet HE public key: {err}") from err
