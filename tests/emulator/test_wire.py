"""Wire-level conformance (raw gRPC): retries, offsets and long-polls the SDK hides.

The real client retries RPCs with the same idempotency key / exec id / offsets; these tests
send those retries explicitly and check the emulator's answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import pytest

pytest.importorskip("modal")
from grpclib import GRPCError, Status
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2, task_command_router_grpc
from modal_proto import task_command_router_pb2 as tcr

from pytest_modal_sandbox.emulator.ids import is_v1_sandbox_id

Stubs = tuple[Any, Any]


def run(url: str, fn: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        parsed = urlparse(url)
        channel = Channel(parsed.hostname, parsed.port)
        try:
            control = api_grpc.ModalClientStub(channel)
            router = task_command_router_grpc.TaskCommandRouterStub(channel)
            return await fn(control, router)
        finally:
            channel.close()

    return asyncio.run(main())


async def new_app(control: Any) -> str:
    resp = await control.AppGetOrCreate(
        api_pb2.AppGetOrCreateRequest(app_name="wire", object_creation_type=1)
    )
    return str(resp.app_id)


def create_request(app_id: str, *args: str, **definition: Any) -> Any:
    return api_pb2.SandboxCreateV2Request(
        app_id=app_id,
        definition=api_pb2.Sandbox(
            entrypoint_args=list(args),
            image_id="im-staleimageidfromanotherrun",  # unknown ids run on the default root
            timeout_secs=60,
            **definition,
        ),
    )


def bearer(resp: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {resp.command_router_access.jwt}"}


async def terminate(control: Any, *sandbox_ids: str) -> None:
    for sid in sandbox_ids:
        await control.SandboxTerminateV2(api_pb2.SandboxTerminateRequest(sandbox_id=sid))


async def read_all(router: Any, md: dict[str, str], req: Any, method: str) -> list[Any]:
    async with getattr(router, method).open(metadata=md) as stream:
        await stream.send_message(req, end=True)
        return [msg async for msg in stream]


def deduplicated(emulator: Any, what: str) -> int:
    """Retries the emulator recognised and did not run again (its stats)."""
    return int(emulator.stats()["chaos"].get("deduplicated", {}).get(what, 0))


def test_create_is_idempotent_and_ids_have_modal_shapes(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        app_id = await new_app(control)
        key = {"x-idempotency-key": str(uuid.uuid4())}
        before = deduplicated(emulator, "create")
        first = await control.SandboxCreateV2(create_request(app_id), metadata=key)
        retry = await control.SandboxCreateV2(create_request(app_id), metadata=key)
        assert deduplicated(emulator, "create") == before + 1  # counted in the stats
        other = await control.SandboxCreateV2(
            create_request(app_id), metadata={"x-idempotency-key": str(uuid.uuid4())}
        )
        try:
            assert retry.sandbox_id == first.sandbox_id
            assert other.sandbox_id != first.sandbox_id
            assert first.sandbox_id.startswith("sb-") and not is_v1_sandbox_id(first.sandbox_id)
            assert first.task_id.startswith("ta-") and first.task_id.endswith("V")
            assert app_id.startswith("ap-") and len(app_id) == 25
            payload = first.command_router_access.jwt.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            assert claims["exp"] > 0
            assert first.command_router_access.url == emulator.url
        finally:
            await terminate(control, first.sandbox_id, other.sandbox_id)

    run(emulator.url, body)


def test_exec_start_is_idempotent_by_exec_id(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        sb = await control.SandboxCreateV2(create_request(await new_app(control)))
        md = bearer(sb)
        try:
            exec_id = str(uuid.uuid4())
            start = tcr.TaskExecStartRequest(
                task_id=sb.task_id,
                exec_id=exec_id,
                command_args=["sh", "-c", "echo run >> /tmp/count"],
                stdout_config=1,
                stderr_config=1,
            )
            before = deduplicated(emulator, "exec")
            await router.TaskExecStart(start, metadata=md)
            await router.TaskExecStart(start, metadata=md)  # a retry
            assert deduplicated(emulator, "exec") == before + 1
            wait = tcr.TaskExecWaitRequest(task_id=sb.task_id, exec_id=exec_id)
            assert (await router.TaskExecWait(wait, metadata=md)).code == 0
            check_id = str(uuid.uuid4())
            await router.TaskExecStart(
                tcr.TaskExecStartRequest(
                    task_id=sb.task_id,
                    exec_id=check_id,
                    command_args=["cat", "/tmp/count"],
                    stdout_config=1,
                ),
                metadata=md,
            )
            read = tcr.TaskExecStdioReadRequest(task_id=sb.task_id, exec_id=check_id)
            chunks = await read_all(router, md, read, "TaskExecStdioRead")
            assert b"".join(c.data for c in chunks) == b"run\n"
        finally:
            await terminate(control, sb.sandbox_id)

    run(emulator.url, body)


def test_stdin_writes_by_offset_and_stdio_reads_from_offset(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        sb = await control.SandboxCreateV2(create_request(await new_app(control)))
        md = bearer(sb)
        try:
            exec_id = str(uuid.uuid4())
            await router.TaskExecStart(
                tcr.TaskExecStartRequest(
                    task_id=sb.task_id,
                    exec_id=exec_id,
                    command_args=["cat"],
                    stdout_config=1,
                    stderr_config=1,
                ),
                metadata=md,
            )

            def write(offset: int, data: bytes, eof: bool = False) -> Any:
                return router.TaskExecStdinWrite(
                    tcr.TaskExecStdinWriteRequest(
                        task_id=sb.task_id, exec_id=exec_id, offset=offset, data=data, eof=eof
                    ),
                    metadata=md,
                )

            await write(0, b"ab")
            await write(0, b"ab")  # retried: dropped
            await write(1, b"bcd")  # overlapping retry: only "cd" is new
            with pytest.raises(GRPCError) as gap:
                await write(10, b"zz")
            assert gap.value.status == Status.INVALID_ARGUMENT
            await write(4, b"efghij", eof=True)
            await write(4, b"efghij", eof=True)  # a second EOF is ignored
            req = tcr.TaskExecStdioReadRequest(
                task_id=sb.task_id, exec_id=exec_id, offset=3, file_descriptor=0
            )
            chunks = await read_all(router, md, req, "TaskExecStdioRead")
            assert all(c.data for c in chunks)  # never an empty chunk
            assert b"".join(c.data for c in chunks) == b"defghij"
            stderr = tcr.TaskExecStdioReadRequest(
                task_id=sb.task_id, exec_id=exec_id, file_descriptor=1
            )
            assert await read_all(router, md, stderr, "TaskExecStdioRead") == []  # EOF, no data
            status = await router.TaskExecStdinStatus(
                tcr.TaskExecStdinStatusRequest(task_id=sb.task_id, exec_id=exec_id), metadata=md
            )
            assert status.num_bytes_written == 10 and status.closed
        finally:
            await terminate(control, sb.sandbox_id)

    run(emulator.url, body)


def test_entrypoint_stdio_reads_report_their_starting_offset(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        sb = await control.SandboxCreateV2(
            create_request(await new_app(control), "printf", "0123456789")
        )
        md = bearer(sb)
        try:
            wait = api_pb2.SandboxWaitRequest(sandbox_id=sb.sandbox_id, timeout=30)
            assert (await control.SandboxWaitV2(wait)).result.status == 1  # SUCCESS
            req = tcr.SandboxStdioReadV2Request(task_id=sb.task_id, offset=4)
            chunks = await read_all(router, md, req, "SandboxStdioReadV2")
            assert chunks and chunks[0].starting_offset == 4
            assert b"".join(c.data for c in chunks) == b"456789"
        finally:
            await terminate(control, sb.sandbox_id)

    run(emulator.url, body)


def test_wait_long_poll_answers_empty_when_still_running(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        sb = await control.SandboxCreateV2(create_request(await new_app(control)))
        try:
            for timeout in (0.0, 0.3):
                req = api_pb2.SandboxWaitRequest(sandbox_id=sb.sandbox_id, timeout=timeout)
                resp = await control.SandboxWaitV2(req)
                assert resp.result.status == 0  # still running
            await terminate(control, sb.sandbox_id)
            resp = await control.SandboxWaitV2(
                api_pb2.SandboxWaitRequest(sandbox_id=sb.sandbox_id, timeout=10)
            )
            assert resp.result.status == api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
            task = await control.SandboxGetTaskIdV2(
                api_pb2.SandboxGetTaskIdRequest(sandbox_id=sb.sandbox_id)
            )
            # Modal answers a finished sandbox's task id too, with its result
            assert task.task_id == sb.task_id
            assert task.task_result.status == api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
        finally:
            await terminate(control, sb.sandbox_id)

    run(emulator.url, body)


def test_list_pages_strictly_before_the_timestamp(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        app_id = await new_app(control)
        tag = api_pb2.SandboxTag(tag_name="page", tag_value=str(uuid.uuid4()))
        made = []
        try:
            for _ in range(3):
                req = create_request(app_id)
                req.tags.append(tag)
                made.append((await control.SandboxCreateV2(req)).sandbox_id)
            seen: list[str] = []
            before = 0.0
            for _ in range(10):
                page = await control.SandboxListV2(
                    api_pb2.SandboxListRequest(app_id=app_id, before_timestamp=before, tags=[tag])
                )
                if not page.sandboxes:
                    break
                assert len(page.sandboxes) <= 2  # the session emulator's page size
                seen += [s.id for s in page.sandboxes]
                before = page.sandboxes[-1].created_at
            assert seen == list(reversed(made))
        finally:
            await terminate(control, *made)

    run(emulator.url, body)


def test_unknown_rpcs_are_unimplemented_and_the_router_checks_its_token(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        with pytest.raises(GRPCError) as err:
            await control.FunctionGet(api_pb2.FunctionGetRequest(app_name="x"))
        assert err.value.status == Status.UNIMPLEMENTED and "emulator" in (err.value.message or "")
        sb = await control.SandboxCreateV2(create_request(await new_app(control)))
        try:
            poll = tcr.TaskExecPollRequest(task_id=sb.task_id, exec_id="x")
            for md in ({}, {"authorization": "Bearer fake-jwt-token"}):
                with pytest.raises(GRPCError) as err:
                    await router.TaskExecPoll(poll, metadata=md)
                assert err.value.status == Status.UNAUTHENTICATED
            with pytest.raises(GRPCError) as err:
                await router.TaskExecPoll(poll, metadata=bearer(sb))
            assert err.value.status == Status.NOT_FOUND  # authenticated; no such exec
        finally:
            await terminate(control, sb.sandbox_id)

    run(emulator.url, body)


def test_bad_create_requests_are_invalid_argument(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        app_id = await new_app(control)
        bad = [
            create_request(app_id),
            create_request(app_id, workdir="relative/dir"),
            create_request(app_id),
        ]
        bad[0].definition.timeout_secs = 10 * 24 * 3600
        bad[2].definition.open_ports.ports.extend(
            [api_pb2.PortSpec(port=80), api_pb2.PortSpec(port=80)]
        )
        for req in bad:
            with pytest.raises(GRPCError) as err:
                await control.SandboxCreateV2(req)
            assert err.value.status == Status.INVALID_ARGUMENT, err.value.message

    run(emulator.url, body)


def test_router_access_and_app_stop(emulator: Any) -> None:
    async def body(control: Any, router: Any) -> None:
        app_id = await new_app(control)
        sb = await control.SandboxCreateV2(create_request(app_id))
        other_app = await control.AppGetOrCreate(
            api_pb2.AppGetOrCreateRequest(app_name="wire-other", object_creation_type=1)
        )
        bystander = await control.SandboxCreateV2(create_request(other_app.app_id))
        try:
            by_sandbox = await control.SandboxGetCommandRouterAccess(
                api_pb2.SandboxGetCommandRouterAccessRequest(sandbox_id=sb.sandbox_id)
            )
            by_task = await control.TaskGetCommandRouterAccess(
                api_pb2.TaskGetCommandRouterAccessRequest(task_id=sb.task_id)
            )
            for access in (by_sandbox, by_task):
                assert access.url == emulator.url
                md = {"authorization": f"Bearer {access.jwt}"}
                await router.TaskExecStart(
                    tcr.TaskExecStartRequest(
                        task_id=sb.task_id, exec_id=str(uuid.uuid4()), command_args=["true"]
                    ),
                    metadata=md,
                )
            await control.AppStop(api_pb2.AppStopRequest(app_id=app_id))
            for sandbox_id, status in ((sb.sandbox_id, 3), (bystander.sandbox_id, 0)):
                resp = await control.SandboxWaitV2(
                    api_pb2.SandboxWaitRequest(sandbox_id=sandbox_id, timeout=0)
                )
                assert resp.result.status == status  # only the stopped app's sandbox ended
        finally:
            await terminate(control, sb.sandbox_id, bystander.sandbox_id)

    run(emulator.url, body)


def test_a_create_whose_caller_is_cancelled_still_completes_and_is_tracked(
    tmp_path: Any, runtime_available: None
) -> None:
    """A client deadline mid-create cancels the RPC handler, never the half-made sandbox: it
    is registered (listable, terminable), and the retry with the same key gets it."""
    import contextlib

    from pytest_modal_sandbox.emulator import serve

    with serve(state_dir=tmp_path) as emu:
        manager = emu.emulator.sandboxes
        assert manager is not None

        async def scenario() -> tuple[str, list[str], int]:
            app = manager.registry.app_get_or_create("cancel", "", 1)
            req = create_request(app.id)
            caller = asyncio.ensure_future(manager.create(req, "key-1"))
            while "key-1" not in manager._creates:  # the create is under way
                await asyncio.sleep(0)
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
            retried = await manager.create(req, "key-1")
            listed = manager.query(
                app_id=app.id,
                environment="",
                tags={},
                before=0.0,
                include_finished=False,
                limit=10,
            )
            return retried.id, [sb.id for sb in listed], len(manager.all())

        future = asyncio.run_coroutine_threadsafe(scenario(), emu._loop)
        sandbox_id, listed, total = future.result(60)
    assert listed == [sandbox_id] and total == 1
