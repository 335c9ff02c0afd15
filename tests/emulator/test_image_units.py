"""Pure logic of the emulator's images: Dockerfile lines, layer keys, records and the join."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pytest_modal_sandbox.emulator import dockerfile as df
from pytest_modal_sandbox.emulator import images
from pytest_modal_sandbox.emulator.build_cache import BuildCache, ImageState
from pytest_modal_sandbox.emulator.builder import Builder, LayerBuild, layer_key
from pytest_modal_sandbox.emulator.mounts import ContextFile, MountStore


def test_dockerfile_lines_become_steps() -> None:
    steps = df.parse(
        [
            "FROM base",
            "RUN echo hi && exit 0",
            'RUN ["/bin/true", "x"]',
            "ENV A=1 B='two words'",
            "ENV LEGACY some value",
            "ARG V=3",
            "WORKDIR '/srv/app'",
            "COPY /.requirements.txt /.requirements.txt",
            'SHELL ["/bin/bash", "-c"]',
            'CMD ["sleep", "172800"]',
        ],
        bases=["base"],
    )
    assert steps == [
        df.From("base", True),
        df.Run("RUN echo hi && exit 0", None, "echo hi && exit 0"),
        df.Run('RUN ["/bin/true", "x"]', ("/bin/true", "x"), '["/bin/true", "x"]'),
        df.Env((("A", "1"), ("B", "two words"))),
        df.Env((("LEGACY", "some value"),)),
        df.Arg("V", "3"),
        df.Workdir("/srv/app"),
        df.Copy(
            "COPY /.requirements.txt /.requirements.txt",
            ("/.requirements.txt",),
            "/.requirements.txt",
        ),
        df.Shell(("/bin/bash", "-c")),
        df.Ignored("CMD", 'CMD ["sleep", "172800"]'),
    ]
    assert df.parse(["FROM python:3.12-slim"]) == [df.From("python:3.12-slim", False)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["FROM base", "HEREDOC x"], "'HEREDOC x': the emulator does not support the HEREDOC"),
        (["FROM a", "FROM b"], "one FROM line"),
        (["RUN true", "FROM a"], "FROM must be the first line"),
        (["FROM a", "ENV 1A=x"], "'1A=x' is not KEY=VALUE"),
        (["FROM a", "SHELL /bin/bash -c"], "SHELL needs a JSON array"),
        (["FROM a", "RUN"], "RUN needs a command"),
        (["FROM a", "COPY onlyone"], "COPY needs a source and a destination"),
    ],
)
def test_dockerfile_errors_name_the_line(lines: list[str], message: str) -> None:
    with pytest.raises(df.DockerfileError, match=message):
        df.parse(lines)


def test_variables_expand_as_docker_does() -> None:
    env = {"HOME": "/root", "EMPTY": ""}
    assert df.expand("$HOME/x ${HOME}y", env) == "/root/x /rooty"
    assert df.expand("${NOPE:-dflt} ${EMPTY:-e} ${HOME:+set} ${NOPE:+set}.", env) == "dflt e set ."
    assert df.expand("\\$HOME $NOPE", env) == "$HOME "


def test_layer_keys_follow_everything_that_shapes_the_content() -> None:
    run = df.parse(["RUN echo a"])
    one, two = {"f": ContextFile(b"1")}, {"f": ContextFile(b"2")}
    base = layer_key("p", LayerBuild(run))
    assert base == layer_key("p", LayerBuild(df.parse(["RUN echo a"])))
    assert base != layer_key("q", LayerBuild(run))
    assert base != layer_key("p", LayerBuild(df.parse(["RUN echo b"])))
    assert base != layer_key("p", LayerBuild(run, context=one))
    assert layer_key("p", LayerBuild(run, context=one)) != layer_key(
        "p", LayerBuild(run, context=two)
    )
    executable = {"f": ContextFile(b"1", 0o755)}
    assert layer_key("p", LayerBuild(run, context=one)) != layer_key(
        "p", LayerBuild(run, context=executable)
    )
    assert base != layer_key("p", LayerBuild(run, secret_env={"TOKEN": "x"}))


def test_mounts_store_contents_once_and_check_digests() -> None:
    import hashlib

    store = MountStore()
    digest = hashlib.sha256(b"data").hexdigest()
    assert store.missing([digest, digest]) == [digest]
    with pytest.raises(images.RpcError, match="does not match"):
        store.put(digest, b"other")
    assert store.put(digest, b"data") and store.missing([digest]) == []
    with pytest.raises(images.RpcError, match="was not uploaded"):
        store.create([("/a", "0" * 64, 0o644)])
    mount = store.create([("/dir/a", digest, 0o100755)])
    assert store.files(mount) == {"dir/a": ContextFile(b"data", 0o100755)}
    with pytest.raises(images.RpcError, match="no Modal-provided mounts"):
        store.create([], name="python-build-standalone")
    with pytest.raises(images.RpcError, match="blob store"):
        store.put(digest, b"", "bl-123")


def _service(tmp_path: Path, mode: str = "host") -> images.ImageService:
    async def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    builder = Builder(BuildCache(tmp_path / "cache"), runtime=None, blocking=blocking)  # type: ignore[arg-type]
    return images.ImageService(builder, mode=mode)  # type: ignore[arg-type]


def _layer(image_id: str, lines: tuple[str, ...], bases: tuple[tuple[str, str], ...] = ()) -> Any:
    return lambda: images.ImageLayer(image_id, lines, bases)


def test_records_dedupe_and_the_join_streams_log_then_result(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = _service(tmp_path)
        base, result = service.get_or_create(
            b"debian", _layer("im-base", ("FROM python:3.11-slim", "ENV A=1", "WORKDIR /srv"))
        )
        assert result is None  # building: the client joins
        responses = [r async for r in service.join(base.id, "", 5.0)]
        assert responses[-1].eof and responses[-1].result.status == images._R.GENERIC_STATUS_SUCCESS
        logs = "".join(t.data for r in responses for t in r.task_logs)
        assert "FROM python:3.11-slim: the host root (--images=host)" in logs
        # a rejoin from the last entry id gets just the result
        again = [r async for r in service.join(base.id, responses[-1].entry_id, 5.0)]
        assert len(again) == 1 and again[0].eof and not again[0].task_logs
        same, result = service.get_or_create(b"debian", _layer("im-other", ()))
        assert same is base and result is not None  # built here: no join
        top, _ = service.get_or_create(
            b"top", _layer("im-top", ("FROM base", "ENV B=$A-2"), (("base", base.id),))
        )
        state = await service.state_for(top.id)
        assert state.rootfs is None and dict(state.env) == {"A": "1", "B": "1-2"}
        assert state.workdir == "/srv"
        assert [layer.id for layer in service.chain(top.id)] == ["im-base", "im-top"]
        assert await service.state_for("im-stale") is images.HOST
        assert service.stats() == {"layers": 2, "builds": 0, "cache_hits": 0}

    asyncio.run(scenario())


def test_a_failed_layer_reports_failure_and_a_retry_builds_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = _service(tmp_path)
        bad, _ = service.get_or_create(b"bad", _layer("im-bad", ("FROM x", "HEREDOC y")))
        final = [r async for r in service.join(bad.id, "", 5.0)][-1]
        assert final.result.status == images._R.GENERIC_STATUS_FAILURE
        assert "does not support the HEREDOC instruction" in final.result.exception
        retry, result = service.get_or_create(b"bad", _layer("im-retry", ("FROM x", "HEREDOC y")))
        assert retry.id == "im-retry" and result is None
        with pytest.raises(images.RpcError, match="failed to build"):
            await service.state_for(bad.id)
        await service.close()

    asyncio.run(scenario())


def test_a_join_ends_without_a_result_at_its_timeout(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = _service(tmp_path)
        gate = asyncio.Event()

        async def slow_parent(image_id: str) -> Any:
            await gate.wait()
            return images.HOST

        service._parent = slow_parent  # type: ignore[method-assign]
        top, _ = service.get_or_create(b"t", _layer("im-t", ("FROM base",), (("base", "im-b"),)))
        responses = [r async for r in service.join(top.id, "", 0.05)]
        assert all(not r.eof for r in responses)  # the client rejoins
        gate.set()
        responses = [r async for r in service.join(top.id, "", 5.0)]
        assert responses[-1].eof

    asyncio.run(scenario())


def test_build_cache_sweeps_interrupted_builds_and_prunes_unused_roots(tmp_path: Path) -> None:
    from filelock import FileLock

    cache = BuildCache(tmp_path / "builds")
    lost = cache.staging("a" * 64)  # its builder died: nobody holds the key's lock
    busy = cache.staging("b" * 64)
    held = FileLock(cache.lock_file("b" * 64), thread_local=False)
    held.acquire()
    try:
        assert cache.sweep() == [lost.name]
        assert busy.exists()
    finally:
        held.release()

    def commit(key: str) -> Any:
        staging = cache.staging(key)
        (staging / "rootfs").mkdir()
        (staging / "rootfs" / "f").write_text(key)
        state = cache.commit(staging, ImageState(key, None, env={"K": key}), {"steps": []})
        assert cache.lookup(key) == state and dict(state.env) == {"K": key}
        return state

    in_use = commit("c" * 64)
    commit("d" * 64)
    with in_use.use():
        assert cache.prune() == ["d" * 64]
    assert cache.lookup("d" * 64) is None and cache.lookup("c" * 64) is not None
    assert not busy.exists()  # pruning sweeps too
