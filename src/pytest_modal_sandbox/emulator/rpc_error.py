"""The one exception the emulator's internals raise for a request they must refuse."""

from __future__ import annotations


class RpcError(Exception):
    """Answer the RPC with ``status`` (a grpclib ``Status`` member name) and ``message``.

    Kept free of grpclib so the pure modules stay importable and testable on their own; the
    servicers turn it into a ``GRPCError``, which the client maps to its own exception
    (NOT_FOUND -> NotFoundError, ALREADY_EXISTS -> AlreadyExistsError, ...).  With
    ``retry_after`` (seconds) the error carries Modal's ``RPCRetryPolicy`` detail: the client
    sleeps that long and retries instead of raising (how Modal throttles).
    """

    def __init__(self, status: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
