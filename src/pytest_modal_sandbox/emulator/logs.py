"""A sandbox's entrypoint output as Modal's logs: timestamped lines for ``sb.logs``.

``Sandbox.logs.tail()`` / ``.fetch()`` ask the control plane (``AppFetchLogs``,
``AppCountLogs``) for log entries by app, task or sandbox, time window and source; an entry is
a line of the entrypoint's stdout or stderr with the time it was written.  The runtime writes
that output to files, so :class:`EntrypointLog` follows them (from the emulator's sandbox
poller, every 50 ms, and once more when the sandbox ends) and stamps each new line with the
time it saw it: a line's timestamp is at most one poll late.  The newest ``MAX_LINES`` lines
per sandbox are kept.  Output of ``exec`` is not in the logs, as on Modal.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from modal_proto import api_pb2

MAX_LINES = 20_000
READ = 1 << 20  # bytes read from one file per collection
STDOUT: int = api_pb2.FILE_DESCRIPTOR_STDOUT
STDERR: int = api_pb2.FILE_DESCRIPTOR_STDERR
Reader = Callable[[int, int], bytes]  # (offset, size) -> the bytes there now


@dataclass(frozen=True)
class LogLine:
    timestamp: float
    fd: int  # FILE_DESCRIPTOR_STDOUT / _STDERR
    text: str  # with its newline, if it had one


class EntrypointLog:
    """Lines of one sandbox's entrypoint output, stamped as they appear (thread-safe)."""

    def __init__(self) -> None:
        self._lines: deque[LogLine] = deque(maxlen=MAX_LINES)
        self._offsets: dict[int, int] = {STDOUT: 0, STDERR: 0}
        self._partial: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
        self._lock = threading.Lock()

    def collect(self, readers: Mapping[int, Reader], *, final: bool = False) -> None:
        """Read what was appended to the output (``{fd: read(offset, size)}``); with ``final``
        (the sandbox ended) a last line without a newline is complete too."""
        with self._lock:
            now = time.time()
            for fd, read in readers.items():
                data = self._partial[fd] + read(self._offsets[fd], READ)
                self._offsets[fd] += len(data) - len(self._partial[fd])
                *complete, rest = data.split(b"\n")
                for line in complete:
                    self._lines.append(LogLine(now, fd, (line + b"\n").decode(errors="replace")))
                if final and rest:
                    self._lines.append(LogLine(now, fd, rest.decode(errors="replace")))
                    rest = b""
                self._partial[fd] = rest

    def select(
        self, *, since: float | None, until: float | None, fd: int, search: str
    ) -> list[LogLine]:
        """Lines in ``[since, until)`` (None: open), of ``fd`` (0: both), containing ``search``."""
        with self._lock:
            return [
                line
                for line in self._lines
                if (since is None or line.timestamp >= since)
                and (until is None or line.timestamp < until)
                and (not fd or line.fd == fd)
                and (not search or search in line.text)
            ]


def batches(
    found: Iterable[tuple[str, str, list[LogLine]]], limit: int
) -> list[api_pb2.TaskLogsBatch]:
    """``AppFetchLogs``' answer: one batch per ``(task_id, sandbox_id, lines)``, with at most
    ``limit`` lines (the newest) across them, oldest first."""
    stamped = [(line, task, sandbox) for task, sandbox, lines in found for line in lines]
    stamped.sort(key=lambda item: item[0].timestamp)
    if limit > 0:
        stamped = stamped[-limit:]
    out: dict[str, api_pb2.TaskLogsBatch] = {}
    for line, task, sandbox in stamped:
        batch = out.setdefault(task, api_pb2.TaskLogsBatch(task_id=task, sandbox_id=sandbox))
        batch.items.append(
            api_pb2.TaskLogs(
                data=line.text,
                timestamp=line.timestamp,
                timestamp_ns=int(line.timestamp * 1e9),
                file_descriptor=line.fd,  # type: ignore[arg-type]
                container_id=task,
            )
        )
    return list(out.values())


def buckets(
    lines: Iterable[LogLine], bucket_secs: int
) -> list[api_pb2.AppCountLogsResponse.LogBucket]:
    """``AppCountLogs``' answer: non-empty buckets aligned to multiples of ``bucket_secs``."""
    size = max(1, bucket_secs)
    counts: dict[int, list[int]] = {}
    for line in lines:
        start = int(line.timestamp // size) * size
        per = counts.setdefault(start, [0, 0])
        per[0 if line.fd == STDOUT else 1] += 1
    out = []
    for start in sorted(counts):
        bucket = api_pb2.AppCountLogsResponse.LogBucket(
            stdout_logs=counts[start][0], stderr_logs=counts[start][1]
        )
        bucket.bucket_start_at.FromSeconds(start)
        out.append(bucket)
    return out
