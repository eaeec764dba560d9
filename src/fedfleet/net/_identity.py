"""Who is calling, and refusing them in words: the handlers' identity and refusal log.

Under mutual TLS a caller is the client its certificate's CN names (``client-<id>``), unless the
revocation file lists it (re-read only when its mtime changes); without TLS, the id it claims.
Every refusal is logged with the client or peer, but a client repeating a refused call is only
logged at powers of two, so it cannot flood the log; refused updates are kept in the bounded
:class:`~fedfleet.net._rejections.RejectionLog`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import grpc

from fedfleet.errors import UpdateRejected, clip_text
from fedfleet.net._certs import client_id_from_cn
from fedfleet.net._state import _Refused, _ServerState

__all__ = ["_Identity"]

log = logging.getLogger("fedfleet.net.server")


class _Identity(_ServerState):
    """Identity and refusal logging of ``FederatedServer``'s handlers (mixed into it)."""

    def _revoked(self) -> frozenset[str]:
        """The revoked CNs and ids, re-read only when the file changes (every call checks)."""
        path = self.settings.revoked_path
        if path is None and self.settings.certs_dir is not None:
            path = str(Path(self.settings.certs_dir) / "revoked.txt")
        if path is None:
            return frozenset()
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        cached = self._revoked_cache
        if cached is not None and cached[0] == path and cached[1] == mtime:
            return cached[2]
        try:
            lines = Path(path).read_text().splitlines()
        except FileNotFoundError:
            return frozenset()
        revoked = frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))
        self._revoked_cache = (path, mtime, revoked)
        return revoked

    def _identify(self, context: Any, claimed: int) -> int:
        """The caller's client id: from its certificate under TLS, as claimed when insecure."""
        if self.settings.insecure:
            if claimed < 0:
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "client_id must be >= 0")
            return claimed
        auth = context.auth_context()
        cns = auth.get("x509_common_name") or []
        cn = clip_text(cns[0].decode(errors="replace") if cns else "")
        cid = client_id_from_cn(cn)
        if cid is None:
            log.warning("refused peer %s: certificate CN %r names no client", context.peer(), cn)
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate CN {cn!r} is not a client certificate (expected client-<id>)",
            )
        revoked = self._revoked()
        if cn in revoked or str(cid) in revoked:
            log.warning("refused revoked client %s (CN %r) from %s", cid, cn, context.peer())
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"the credential of {cn} has been revoked"
            )
        return cid

    async def _identify_or_abort(self, context: Any, claimed: int) -> int:
        try:
            return self._identify(context, claimed)
        except _Refused as r:
            await context.abort(r.code, r.message)
            raise AssertionError("unreachable") from None  # abort raises

    def caller(self, context: Any) -> str:
        """Who is calling, for a refusal that comes before the message names its sender:
        ``client N`` from its certificate under TLS, else the peer's address."""
        if not self.settings.insecure:
            try:
                return f"client {self._identify(context, -1)}"
            except _Refused:
                pass
        return f"peer {context.peer()}"

    def refuse_headless(self, context: Any, rpc: str) -> str:
        """Log and return the reason for a stream that does not start with its header."""
        who = self.caller(context)
        reason = f"{rpc} from {who}: the stream must start with a header"
        self._log_refusal(who, "refused %s", reason)
        return reason

    def _log_refusal(
        self, who: int | str, fmt: str, *args: Any, level: int = logging.WARNING
    ) -> None:
        """Log about ``who`` (a client id or a peer): every line while they are few, then only
        at powers of two, so a client repeating a call cannot flood the log."""
        counts = self._log_counts
        if who not in counts and len(counts) >= 100_000:
            who = "others"
        counts[who] += 1
        n = counts[who]
        if n <= 10 or n & (n - 1) == 0:
            suffix = f" [{n} such warnings about {who} so far]" if n > 10 else ""
            log.log(level, fmt + suffix, *args)

    def record_rejection(self, rej: UpdateRejected, peer: str) -> None:
        """Keep ``rej`` in the bounded log (call with ``_cond`` held); log it while the
        client's refusals are few, then only at powers of two, so a flood of refused messages
        cannot flood the log either."""
        self.rejected.append(rej)
        self._log_refusal(rej.client_id, "%s (from %s)", rej, peer)
