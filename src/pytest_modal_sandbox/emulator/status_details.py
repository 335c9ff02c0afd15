"""How error details travel: Modal's ``RPCStatus`` envelope, as the ``modal`` client decodes it.

Modal packs an error's details (e.g. the ``RPCRetryPolicy`` of a throttled create) into an
``api_pb2.RPCStatus`` with ``type.modal.com/`` type URLs; the client's
``CustomProtoStatusDetailsCodec`` reads exactly that.  The same few lines are written here so
the emulator does not import the ``modal`` client package (a second of start-up) for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from google.protobuf import symbol_database  # type: ignore[import-untyped]
from grpclib import Status
from grpclib.encoding.base import StatusDetailsCodecBase
from modal_proto import api_pb2


class ModalStatusDetailsCodec(StatusDetailsCodecBase):
    """grpclib's details codec speaking Modal's ``RPCStatus`` envelope."""

    def encode(self, status: Status, message: str | None, details: Sequence[Any] | None) -> bytes:
        envelope = api_pb2.RPCStatus(code=status.value, message=message or "")
        for detail in details or ():
            container = envelope.details.add()
            if detail.DESCRIPTOR.full_name.startswith("modal."):
                container.Pack(detail, type_url_prefix="type.modal.com/")
            else:
                container.Pack(detail)
        return bytes(envelope.SerializeToString())

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        details = []
        for container in api_pb2.RPCStatus.FromString(data).details:
            with contextlib.suppress(Exception):  # a type this side does not know: skipped
                detail = symbol_database.Default().GetSymbol(container.TypeName())()
                container.Unpack(detail)
                details.append(detail)
        return details


CODEC = ModalStatusDetailsCodec()
