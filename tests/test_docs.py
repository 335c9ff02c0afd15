"""Every code sample in docs/ and README.md is executed, and the reference covers the plugin.

How a page marks its samples (the convention this harness runs; docs/writing-docs.md repeats it):

* A fenced block whose first line is ``# content of <path>`` (```python, ```ini, ```toml,
  ```yaml) is a file of the page's **project**, written at ``<path>`` in a fresh directory.
  A page has one project until ``<!-- doc-test: project NAME -->`` starts another (each in its
  own directory, e.g. one per hook on hooks.md).
* A project with a ``test_*.py`` file is run once with
  ``pytest --modal-sandbox=local --modal-sandbox-local-images=host -p no:cacheprovider`` and
  must pass without skips, unless the project declares otherwise (anywhere after its start):

      <!-- doc-test: args -n 2 -->                       more arguments (later ones win)
      <!-- doc-test: outcomes passed=1 failed=1 -->      exact outcomes (exit code not checked)
      <!-- doc-test: expect-output *KEPT ALIVE* -->      fnmatch lines, in order, repeatable

* A ```python block without that header is a **script**: run with this Python in its own
  directory, it must exit 0.
* ```console blocks: each ``$ `` line that runs ``pytest``, ``python -m pytest`` or
  ``python -m pytest_modal_sandbox...`` (after optional ``VAR=value`` words) is run in its
  project's directory (after the project run) and must exit 0, or N after
  ``<!-- doc-test: exit N -->`` right before the block.  ``$ export VAR=value`` sets VAR for
  the project's later commands.  Other ``$`` lines (pip, apt, shell) are shown, not run.
* pytest runs (the project's, and ``pytest`` console lines) run in this process where they
  can, as ``pytester.runpytest_inprocess``; in a process of their own where they must
  (:func:`_own_process`).  Scripts and ``python -m pytest_modal_sandbox`` lines always do.
* ```yaml blocks must parse.  Other languages (```text, ```sh) are not code to run.
* ``<!-- doc-test: skip REASON -->`` right before a block: not run; the reason is required.

Everything runs offline and isolated: HOME and ``PYTEST_MODAL_SANDBOX_STATE_DIR`` point into
the test's tmp dir, no Modal credentials are visible (so ``--modal-sandbox``, i.e. ``auto``,
means the local backend) and ``PYTEST_MODAL_SANDBOX_LOCAL_IMAGES=host`` maps images to the host
filesystem.  After each page no sandbox and no process of it may be left.  README.md follows
the same rules, except that its first python block is the test file ``test_readme.py``.

The completeness tests ask the plugin itself (pytest's parser, ``__all__``, the hookspecs, the
error classes, the CLI's ``--help``) and fail when something is not documented — or when the
docs name an option, ini key or variable that no longer exists.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctable import processes_mentioning as _processes_mentioning

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "pytest_modal_sandbox"
REFERENCE = DOCS / "reference"
WORKFLOW = DOCS / "ci" / "github-actions.yml"
LIVE_WORKFLOW = DOCS / "ci" / "live.yml"
OWNED_ELSEWHERE = {"docs/termination.md": "written with the termination layers"}

PROJECT_ARGS = [
    "--modal-sandbox=local",
    "--modal-sandbox-local-images=host",
    "-p",
    "no:cacheprovider",
]
RUN_TIMEOUT = 180.0
BLOCK_DIRECTIVES = ("skip", "exit")
PROJECT_DIRECTIVES = ("project", "args", "outcomes", "expect-output")
HEADER = re.compile(r"^#\s*content of\s+(\S+)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*([a-z-]+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
RUNNABLE_LANGS = ("python", "console", "yaml", "ini", "toml")
SHOWN_LANGS = ("text", "sh", "bash", "")


# -- parsing ------------------------------------------------------------------------------


@dataclasses.dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    project: str
    skip: str | None = None
    exit: int = 0

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def header_path(self) -> str | None:
        first = self.text.split("\n", 1)[0]
        m = HEADER.match(first)
        return m.group(1) if m else None


@dataclasses.dataclass
class Command:
    block: Block
    argv: list[str]
    env: dict[str, str]
    text: str


@dataclasses.dataclass
class Project:
    name: str
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    args: list[str] = dataclasses.field(default_factory=list)
    outcomes: dict[str, int] | None = None
    expect: list[str] = dataclasses.field(default_factory=list)
    steps: list[Command | tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def has_tests(self) -> bool:
        return any(re.match(r"test_.*\.py$", Path(p).name) for p in self.files)


@dataclasses.dataclass
class Page:
    path: Path
    blocks: list[Block]
    projects: dict[str, Project]
    scripts: list[Block]
    problems: list[str]

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def parse_page(path: Path) -> Page:
    return parse_text(path.relative_to(ROOT).as_posix(), path.read_text(), path)


def parse_text(name: str, text: str, path: Path | None = None) -> Page:
    """Blocks, projects and scripts of one page; problems instead of exceptions."""
    lines = text.split("\n")
    blocks: list[Block] = []
    projects: dict[str, Project] = {"main": Project("main")}
    current = projects["main"]
    problems: list[str] = []
    pending: list[tuple[int, str, str]] = []  # block directives waiting for their block
    i = 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if m:
            key, value = m.group(1), m.group(2)
            if key in BLOCK_DIRECTIVES:
                pending.append((i + 1, key, value))
            elif key == "project":
                if not value or value in projects:
                    problems.append(f"{name}:{i + 1}: project needs a new name, got {value!r}")
                current = projects.setdefault(value or f"p{i}", Project(value or f"p{i}"))
            elif key in PROJECT_DIRECTIVES:
                _project_directive(current, key, value, f"{name}:{i + 1}", problems)
            else:
                problems.append(f"{name}:{i + 1}: unknown directive {key!r}")
        elif fence:
            indent, marks, lang = fence.group(1), fence.group(2), fence.group(3).lower()
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not re.match(rf"^\s*{re.escape(marks)}\s*$", lines[j]):
                text = lines[j]
                body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
                j += 1
            if j == len(lines):
                problems.append(f"{name}:{i + 1}: unclosed code block")
            block = Block(name, i + 1, lang, "\n".join(body) + "\n", current.name)
            for at, key, value in pending:
                if key == "skip":
                    if not value.strip():
                        problems.append(f"{name}:{at}: doc-test: skip needs a reason")
                    block.skip = value.strip() or "?"
                elif key == "exit":
                    if not value.strip().isdigit():
                        problems.append(f"{name}:{at}: doc-test: exit needs a number: {value!r}")
                    else:
                        block.exit = int(value)
            pending = []
            blocks.append(block)
            i = j
        elif line.strip() and pending:
            at = pending[0][0]
            problems.append(f"{name}:{at}: doc-test directive not right before a code block")
            pending = []
        i += 1
    if pending:
        problems.append(f"{name}:{pending[0][0]}: doc-test directive not followed by a block")
    scripts: list[Block] = []
    readme_test = name == "README.md"
    for block in blocks:
        _place(block, projects, scripts, problems, readme_test)
        if readme_test and block.lang == "python":
            readme_test = False
    return Page(path or ROOT / name, blocks, projects, scripts, problems)


def _project_directive(
    project: Project, key: str, value: str, where: str, problems: list[str]
) -> None:
    if key == "args":
        project.args += shlex.split(value)
    elif key == "expect-output":
        if not value:
            problems.append(f"{where}: expect-output needs a pattern")
        project.expect.append(value)
    elif key == "outcomes":
        counts: dict[str, int] = {}
        for word in value.split():
            k, sep, v = word.partition("=")
            if not sep or not v.isdigit():
                problems.append(f"{where}: outcomes takes name=count words, got {word!r}")
                continue
            counts[k] = int(v)
        project.outcomes = counts


def _place(
    block: Block,
    projects: dict[str, Project],
    scripts: list[Block],
    problems: list[str],
    readme_test: bool,
) -> None:
    """File, script, commands or nothing: decided by language, header and directives."""
    project = projects[block.project]
    if block.lang not in RUNNABLE_LANGS + SHOWN_LANGS:
        problems.append(f"{block.where}: unknown block language {block.lang!r}")
        return
    if block.skip is not None:
        return
    path = block.header_path
    if readme_test and block.lang == "python" and path is None:
        path = "test_readme.py"
    if path is not None and block.lang in ("python", "ini", "toml", "yaml"):
        if path in project.files:
            problems.append(f"{block.where}: {path} is already a file of project {project.name!r}")
        if path.startswith("/") or ".." in Path(path).parts:
            problems.append(f"{block.where}: {path} must be a relative path inside the project")
        project.files[path] = block.text
        if block.lang == "python":  # a file of the project that must at least compile
            project.steps.append(("compile", path))
        return
    if block.lang == "python":
        scripts.append(block)
    elif block.lang == "console":
        env: dict[str, str] = {}
        for n, raw in enumerate(block.text.splitlines()):
            if not raw.startswith("$ "):
                continue
            try:
                words = shlex.split(raw[2:], comments=True)
            except ValueError as exc:
                problems.append(f"{block.page}:{block.line + 1 + n}: {exc}: {raw}")
                continue
            command = _command(block, words, env, raw[2:].strip())
            if command is not None:
                project.steps.append(command)


def _command(block: Block, words: list[str], exports: dict[str, str], text: str) -> Command | None:
    """The argv to run for a console line, or None for a line that is only shown."""
    if words[:1] == ["export"]:
        for word in words[1:]:
            k, sep, v = word.partition("=")
            if sep:
                exports[k] = v
        return None
    env = dict(exports)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    if not words:
        return None
    if words[0] == "pytest":
        argv = [sys.executable, "-m", "pytest", *words[1:]]
    elif words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2:
        module = words[2]
        if module != "pytest" and not module.startswith("pytest_modal_sandbox"):
            return None
        argv = [sys.executable, *words[1:]]
    else:
        return None
    return Command(block, argv, env, text)


def all_pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


# -- running ------------------------------------------------------------------------------


def _running_sandboxes(state_dir: Path) -> list[tuple[str, str]]:
    from pytest_modal_sandbox.runtime import LocalRuntime

    found = []
    for sub in ("local", "emulator"):
        if (state_dir / sub).exists():
            runtime = LocalRuntime(state_dir / sub)
            try:
                found += [(sub, sb.id) for sb in runtime.list()]
            finally:
                runtime.close()
    return found


def _end_leftovers(state_dir: Path, timeout: float = 15.0) -> list[str]:
    """Wait for the page's sandboxes and processes to end; end any left, and name them."""
    deadline = time.monotonic() + timeout
    while True:
        sandboxes = _running_sandboxes(state_dir)
        procs = _processes_mentioning(str(state_dir))
        if not sandboxes and not procs:
            return []
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    from pytest_modal_sandbox.runtime import LocalRuntime

    for sub, sid in sandboxes:
        runtime = LocalRuntime(state_dir / sub)
        try:
            runtime.get(sid).terminate()
        except Exception:
            pass
        finally:
            runtime.close()
    for pid, _ in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return [f"sandbox {sid} ({sub})" for sub, sid in sandboxes] + [
        f"pid {p}: {c}" for p, c in procs
    ]


@pytest.fixture
def isolated(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment every sample runs in; yields the state dir, checked for leftovers."""
    state = pytester.path / ".pms-state"
    state.mkdir()
    for var in list(os.environ):
        if var.startswith(("MODAL_", "PYTEST_MODAL_SANDBOX_")) or var in ("XDG_CACHE_HOME",):
            monkeypatch.delenv(var)
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_STATE_DIR", str(state))
    monkeypatch.setenv("PYTEST_MODAL_SANDBOX_LOCAL_IMAGES", "host")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(pytester.path / "no-modal.toml"))
    yield state
    left = _end_leftovers(state)
    assert not left, "samples left these running:\n" + "\n".join(left)


def _output(result: pytest.RunResult) -> str:
    text = "\n".join(result.outlines + result.errlines)
    return text if len(text) < 6000 else "...\n" + text[-6000:]


def _own_process(project: Project, args: list[str], env: dict[str, str]) -> str | None:
    """Why a pytest run of ``project`` must be a process of its own, or None: it runs in this
    one (``runpytest_inprocess``), which saves starting an interpreter, pytest and the plugin.

    ``modal`` reads its configuration when imported and keeps the client it makes from the
    environment for good: this process imported it, so a run that reaches that client (the
    project's own ``modal`` code, the ``modal`` backend) gets a process that imports it afresh.
    A module of the project named like one this process has imported (its own test modules)
    would be taken for that one."""
    if any(re.search(r"^\s*(import|from) modal\b", text, re.M) for text in project.files.values()):
        return "the project uses modal itself"
    if "--modal-sandbox=modal" in args or any(key.startswith("MODAL_") for key in env):
        return "the run uses modal's environment client"
    names = [Path(path).stem for path in project.files if path.endswith(".py")]
    if any(name in sys.modules for name in names):
        return "a module name of the project is taken in this process"
    return None


def _run_project(pytester: pytest.Pytester, page: Page, project: Project, where: Path) -> None:
    os.chdir(where)
    args = [*PROJECT_ARGS, *project.args]
    if _own_process(project, args, {}):
        result = pytester.runpytest_subprocess(*args, timeout=RUN_TIMEOUT)
    else:
        result = pytester.runpytest_inprocess(*args)
    label = f"{page.name}, project {project.name!r}: pytest {' '.join(project.args)}"
    try:
        outcomes = result.parseoutcomes()
    except ValueError:  # no summary line: it crashed
        outcomes = {}
    if project.outcomes is None:
        bad = {k: v for k, v in outcomes.items() if k not in ("passed", "warnings", "warning")}
        if result.ret != 0 or bad or not outcomes.get("passed"):
            pytest.fail(f"{label} did not pass cleanly:\n{_output(result)}", pytrace=False)
    else:
        got = {k: v for k, v in outcomes.items() if k not in ("warnings", "warning")}
        want = {k: v for k, v in project.outcomes.items() if v}
        got = {("errors" if k == "error" else k): v for k, v in got.items()}
        if got != want:
            pytest.fail(f"{label}: outcomes {got}, declared {want}:\n{_output(result)}", False)
    if project.expect:
        try:
            result.stdout.fnmatch_lines(project.expect)
        except pytest.fail.Exception:
            pytest.fail(f"{label}: expected output {project.expect}:\n{_output(result)}", False)


def _run_command(
    pytester: pytest.Pytester, project: Project, command: Command, where: Path
) -> None:
    os.chdir(where)
    args = command.argv[3:] if command.argv[1:3] == ["-m", "pytest"] else None
    with pytest.MonkeyPatch.context() as mp:
        for key, value in command.env.items():
            mp.setenv(key, value)
        if args is None or _own_process(project, args, command.env):
            result = pytester.run(*command.argv, timeout=RUN_TIMEOUT)
        else:
            result = pytester.runpytest_inprocess(*args)
    if int(result.ret) != command.block.exit:
        pytest.fail(
            f"{command.block.where}: `$ {command.text}` exited {int(result.ret)}, "
            f"expected {command.block.exit}:\n{_output(result)}",
            pytrace=False,
        )


def _run_script(pytester: pytest.Pytester, block: Block, where: Path, n: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    script = where / f"doc_script_{n}.py"
    script.write_text(block.text)
    os.chdir(where)
    result = pytester.run(sys.executable, str(script), timeout=RUN_TIMEOUT)
    if result.ret != 0:
        pytest.fail(
            f"{block.where}: script exited {int(result.ret)}:\n{_output(result)}", pytrace=False
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", all_pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_samples_run(
    path: Path, pytester: pytest.Pytester, isolated: Path, inline_runs: None
) -> None:
    page = parse_page(path)
    assert not page.problems, "\n".join(page.problems)
    for block in page.blocks:
        if block.lang == "yaml" and block.skip is None:
            import yaml

            try:
                yaml.safe_load(block.text)
            except yaml.YAMLError as exc:
                pytest.fail(f"{block.where}: yaml does not parse: {exc}", pytrace=False)
    for project in page.projects.values():
        where = pytester.path / "projects" / project.name
        where.mkdir(parents=True)
        for rel, text in project.files.items():
            (where / rel).parent.mkdir(parents=True, exist_ok=True)
            (where / rel).write_text(text)
        if project.has_tests:
            _run_project(pytester, page, project, where)
        for step in project.steps:
            if isinstance(step, Command):
                _run_command(pytester, project, step, where)
            else:
                source = (where / step[1]).read_text()
                try:
                    compile(source, step[1], "exec")
                except SyntaxError as exc:
                    pytest.fail(f"{page.name}: {step[1]} does not compile: {exc}", False)
    for n, block in enumerate(page.scripts):
        _run_script(pytester, block, pytester.path / "scripts", n)


# -- the convention itself ----------------------------------------------------------------


def test_parser_reads_the_convention() -> None:
    """The harness's own parsing, on a page exercising every rule (incl. mistakes)."""
    text = (
        "```python\n# content of test_x.py\ndef test_x(): pass\n```\n"
        "<!-- doc-test: outcomes passed=1 -->\n"
        "<!-- doc-test: exit 1 -->\n"
        "```console\n$ export A=1\n$ B=2 pytest -q  # note\n$ pip install x\n"
        "$ python -m pytest_modal_sandbox list\n$ python -m http.server\n```\n"
        "```python\nprint('script')\n```\n"
        "<!-- doc-test: skip -->\n```python\nraise SystemExit(1)\n```\n"
        "<!-- doc-test: project other -->\n"
        "```ini\n# content of pytest.ini\n[pytest]\n```\n"
        "<!-- doc-test: skip needs the cloud -->\ntext in between\n```console\n$ pytest\n```\n"
        "```rust\nfn main() {}\n```\n"
    )
    page = parse_text("docs/selftest.md", text)
    main, other = page.projects["main"], page.projects["other"]
    assert list(main.files) == ["test_x.py"] and main.has_tests and main.outcomes == {"passed": 1}
    commands = [s for s in main.steps if isinstance(s, Command)]
    assert [c.argv[1:] for c in commands] == [
        ["-m", "pytest", "-q"],
        ["-m", "pytest_modal_sandbox", "list"],
    ]
    assert commands[0].env == {"A": "1", "B": "2"} and commands[0].block.exit == 1
    assert [b.text for b in page.scripts] == ["print('script')\n"]
    assert list(other.files) == ["pytest.ini"] and not other.has_tests
    assert any("skip needs a reason" in p for p in page.problems)
    assert any("not right before a code block" in p for p in page.problems)
    assert any("unknown block language 'rust'" in p for p in page.problems)
    # the directive that lost its block did not attach to the next one: it runs
    assert any(isinstance(s, Command) for s in other.steps)


# -- completeness -------------------------------------------------------------------------


def _reference_text() -> str:
    return "\n".join(p.read_text() for p in sorted(REFERENCE.glob("*.md")))


def _code_spans(text: str) -> str:
    """Everything inside backticks and code blocks (where names are written as code)."""
    spans = re.findall(r"```.*?```", text, re.S) + re.findall(r"`[^`\n]+`", text)
    return "\n".join(spans)


@pytest.fixture
def registered(pytester: pytest.Pytester) -> tuple[set[str], set[str]]:
    """The ``--modal-sandbox*`` options and ``modal_sandbox*`` ini keys pytest's parser holds
    once plugins are loaded from their entry points, as in any run."""
    config = pytester.parseconfig()
    options = {
        name
        for group in config._parser._groups
        for opt in group.options
        for name in opt.names()
        if name.startswith("--modal-sandbox")
    }
    ini = {k for k in config._parser._inidict if k.startswith("modal_sandbox")}
    return options, ini


def test_every_option_and_ini_key_is_documented(registered: tuple[set[str], set[str]]) -> None:
    options, ini = registered
    assert "--modal-sandbox" in options and "modal_sandbox" in ini  # the query itself works
    text = _code_spans((REFERENCE / "options.md").read_text())
    missing = sorted(o for o in options if not re.search(rf"{re.escape(o)}(?![\w-])", text))
    missing += sorted(k for k in ini if not re.search(rf"(?<![\w-]){k}(?!\w)", text))
    assert not missing, f"not in docs/reference/options.md: {missing}"


def test_documented_options_and_ini_keys_exist(registered: tuple[set[str], set[str]]) -> None:
    options, ini = registered
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md"]
    stale = set()
    for page in pages:
        text = page.read_text()
        for name in re.findall(r"(?<![\w-])--modal-sandbox[a-z-]*", text):
            if name.rstrip("-") not in options:
                stale.add(f"{page.relative_to(ROOT)}: {name}")
        for key in re.findall(r"(?<![\w-])modal_sandbox(?:_[a-z]+)*(?![\w(])", text):
            if key not in ini:
                stale.add(f"{page.relative_to(ROOT)}: {key}")
    assert not stale, f"documented but not registered: {sorted(stale)}"


def _env_vars_in(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        found |= set(re.findall(r"PYTEST_MODAL_SANDBOX_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return found


def test_every_environment_variable_is_documented() -> None:
    in_src = _env_vars_in([p for p in SRC.rglob("*") if p.suffix in (".py", ".md")])
    assert "PYTEST_MODAL_SANDBOX_STATE_DIR" in in_src
    documented = _env_vars_in([REFERENCE / "options.md"])
    assert not in_src - documented, f"not in options.md: {sorted(in_src - documented)}"
    in_docs = _env_vars_in([*DOCS.rglob("*.md"), ROOT / "README.md"])
    assert not in_docs - in_src, f"documented, but nothing reads them: {in_docs - in_src}"


def test_every_public_name_is_in_the_reference() -> None:
    import pytest_modal_sandbox

    text = _code_spans(_reference_text())
    missing = [n for n in pytest_modal_sandbox.__all__ if not re.search(rf"\b{n}\b", text)]
    assert not missing, f"in __all__ but not in docs/reference/: {missing}"


def _sections(text: str, level: str = "##") -> dict[str, str]:
    parts = re.split(rf"^{level} +(.+)$", text, flags=re.M)
    return {parts[i].strip("` "): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_every_hook_has_a_section_with_an_executed_example() -> None:
    from pytest_modal_sandbox import hookspecs

    hooks = [
        n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("pytest_")
    ]
    assert len(hooks) == 4
    page = parse_page(REFERENCE / "hooks.md")
    sections = _sections((REFERENCE / "hooks.md").read_text())
    lines = (REFERENCE / "hooks.md").read_text().split("\n")
    for hook in hooks:
        heading = next((h for h in sections if h.split("(")[0] == hook), None)
        assert heading is not None, f"hooks.md has no '## {hook}' section"
        start = next(i for i, line in enumerate(lines) if line.startswith("## ") and hook in line)
        end = next(
            (i for i, line in enumerate(lines) if i > start and line.startswith("## ")), len(lines)
        )
        executed = [
            b
            for b in page.blocks
            if start < b.line <= end
            and b.skip is None
            and b.lang == "python"
            and b.header_path == "conftest.py"
        ]
        assert executed, f"hooks.md: the {hook} section has no executed conftest.py example"
        assert any(hook in b.text for b in executed), f"its example does not implement {hook}"


def _error_classes() -> list[type[BaseException]]:
    import importlib

    classes: list[type[BaseException]] = []
    for module in ("errors", "images.errors", "runtime.errors"):
        mod = importlib.import_module(f"pytest_modal_sandbox.{module}")
        classes += [
            c
            for _, c in inspect.getmembers(mod, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == mod.__name__
        ]
    return classes


def test_every_error_class_is_documented_in_its_place() -> None:
    """errors.md names every class, and its hierarchy block is the real class tree."""
    text = (REFERENCE / "errors.md").read_text()
    classes = _error_classes()
    missing = [c.__name__ for c in classes if f"`{c.__name__}`" not in text]
    assert not missing, f"not in docs/reference/errors.md: {missing}"
    ours = set(classes)

    def parent(cls: type[BaseException]) -> type[BaseException] | None:
        return next((b for b in cls.__bases__ if b in ours), None)

    def tree(cls: type[BaseException], depth: int) -> list[str]:
        also = [b.__name__ for b in cls.__bases__ if b is not parent(cls) and b is not Exception]
        lines = ["    " * depth + cls.__name__ + (f" (also {', '.join(also)})" if also else "")]
        for sub in sorted((c for c in classes if parent(c) is cls), key=lambda c: c.__name__):
            lines += tree(sub, depth + 1)
        return lines

    expected = [line for root in classes if parent(root) is None for line in tree(root, 0)]
    block = re.search(r"^```text\n(SandboxError\n.*?)```", text, re.S | re.M)
    assert block, "errors.md needs the class tree as a ```text block starting with SandboxError"
    shown = [line.rstrip() for line in block.group(1).splitlines() if line.strip()]
    assert shown == expected, "errors.md class tree differs from the code:\n" + "\n".join(expected)


def test_marker_fields_daemon_and_probe_are_documented() -> None:
    from pytest_modal_sandbox import Daemon, Probe
    from pytest_modal_sandbox.spec import FIELDS

    text = (REFERENCE / "marker.md").read_text()
    spans = _code_spans(text)
    missing = [f for f in FIELDS if not re.search(rf"`{f}`", text)]
    missing += [
        p for p in inspect.signature(Daemon.__init__).parameters if p != "self" and p not in spans
    ]
    kinds = [n for n, v in vars(Probe).items() if isinstance(v, classmethod)]
    assert sorted(kinds) == ["exec", "http", "log", "tcp"]
    missing += [f"Probe.{k}" for k in kinds if f"Probe.{k}(" not in spans]
    missing += [p for p in inspect.signature(Probe.http).parameters if p not in spans]
    assert not missing, f"not in docs/reference/marker.md: {missing}"


def test_handle_members_are_documented() -> None:
    from pytest_modal_sandbox import ExecResult, Sandbox

    text = _code_spans((REFERENCE / "handle.md").read_text())
    members = [n for n in vars(Sandbox) if not n.startswith("_")] + ["spec", "backend", "timings"]
    members += [f.name for f in dataclasses.fields(ExecResult)] + ["ok", "check"]
    missing = [m for m in members if not re.search(rf"\b{m}\b", text)]
    params = inspect.signature(Sandbox.exec).parameters
    missing += [p for p in params if p not in ("self", "argv") and f"{p}=" not in text]
    assert not missing, f"not in docs/reference/handle.md: {missing}"


def test_fixture_reference_matches_signatures() -> None:
    from pytest_modal_sandbox import sandbox_fixture, start

    text = _code_spans((REFERENCE / "fixtures.md").read_text())
    missing = [p for p in inspect.signature(sandbox_fixture).parameters if p != "fields"]
    missing += [p for p in inspect.signature(start).parameters if p not in ("options", "spec")]
    missing = [p for p in missing if not re.search(rf"\b{p}=", text)]
    assert not missing, f"parameters not in docs/reference/fixtures.md: {missing}"


CLI_HELP = [
    ["-m", "pytest_modal_sandbox", "--help"],
    ["-m", "pytest_modal_sandbox", "list", "--help"],
    ["-m", "pytest_modal_sandbox", "reap", "--help"],
    ["-m", "pytest_modal_sandbox", "images", "--help"],
    ["-m", "pytest_modal_sandbox", "images", "pull", "--help"],
    ["-m", "pytest_modal_sandbox", "images", "prune", "--help"],
    ["-m", "pytest_modal_sandbox", "emulator", "--help"],
]


@pytest.mark.parametrize("argv", CLI_HELP, ids=lambda a: " ".join(a[2:-1]) or "main")
def test_every_cli_option_is_documented(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    usage = out.split("\n\n")[0]
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", out)) - {"--help"}
    commands = set()
    m = re.search(r"\{([a-z,]+)\}", usage)
    if m:
        commands = set(m.group(1).split(","))
    text = (REFERENCE / "cli.md").read_text()
    missing = [o for o in sorted(options) if not re.search(rf"{o}(?![\w-])", text)]
    missing += [c for c in sorted(commands) if not re.search(rf"\b{c}\b", _code_spans(text))]
    assert not missing, f"`python {' '.join(argv)}` lists these, cli.md does not: {missing}"


# -- links, README and the workflow -------------------------------------------------------


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors, and explicit ``<a id="...">`` ones."""
    text = path.read_text()
    found = {_slug(h) for h in re.findall(r"^#+ +(.+)$", text, flags=re.M)}
    return found | set(re.findall(r'<a id="([^"]+)"', text))


def test_links_resolve() -> None:
    """Relative links in docs/ and README.md point at files (and headings) that exist."""
    broken, elsewhere = [], []
    for page in [*DOCS.rglob("*.md"), ROOT / "README.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
            if not dest.exists():
                (elsewhere if rel in OWNED_ELSEWHERE else broken).append(f"{page.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"
    if elsewhere:
        pytest.skip(f"linked pages not written yet (other owners): {sorted(set(elsewhere))}")


def test_readme_documentation_section_names_every_page() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in re.findall(r"\]\(([^)]+)\)", section)}
    pages = {p.resolve() for p in (DOCS / "how-to").glob("*.md")} | {(DOCS / "index.md")}
    assert not pages - linked, f"README's Documentation section misses {pages - linked}"
    assert {REFERENCE, REFERENCE / "README.md"} & linked, "and the reference"


def test_github_actions_workflow() -> None:
    """A matrix over images on Modal, the token from secrets, reap in an always() step."""
    import yaml

    flow = yaml.safe_load(WORKFLOW.read_text())
    assert flow.get("on") or flow.get(True), "the workflow needs triggers"
    jobs = flow["jobs"]
    job = next(j for j in jobs.values() if "matrix" in j.get("strategy", {}))
    images = job["strategy"]["matrix"]["image"]
    assert len(images) >= 2 and all(isinstance(i, str) and ":" in i for i in images)
    env = dict(job.get("env", {}))
    steps = job["steps"]
    runs_pytest = re.compile(r"(^|\s)(python -m )?pytest\s")
    test_i = next(i for i, s in enumerate(steps) if runs_pytest.search(s.get("run", "")))
    test = steps[test_i]
    env_test = {**env, **test.get("env", {})}
    assert env_test.get("MODAL_TOKEN_ID") == "${{ secrets.MODAL_TOKEN_ID }}"
    assert env_test.get("MODAL_TOKEN_SECRET") == "${{ secrets.MODAL_TOKEN_SECRET }}"
    assert "--modal-sandbox=modal" in test["run"]
    uses_matrix = "${{ matrix.image }}"  # the override: a plain NEW or an OLD=NEW mapping
    assert uses_matrix in str(env_test.get("PYTEST_MODAL_SANDBOX_IMAGE", "")) + test["run"]
    reap = [
        s
        for s in steps[test_i + 1 :]
        if "python -m pytest_modal_sandbox reap --stale" in s.get("run", "")
    ]
    assert reap, "a step after the tests must run `python -m pytest_modal_sandbox reap --stale`"
    assert str(reap[0].get("if", "")).replace("${{", "").replace("}}", "").strip() == "always()"
    env_reap = {**env, **reap[0].get("env", {})}
    assert env_reap.get("MODAL_TOKEN_ID") == "${{ secrets.MODAL_TOKEN_ID }}"
    assert "--backend modal" in reap[0]["run"] or env_reap.get("MODAL_TOKEN_SECRET")
    text = WORKFLOW.read_text()
    assert not re.search(r"(ak|as)-[A-Za-z0-9]{10,}", text), "no literal tokens in the workflow"


def test_ci_matrix_page_shows_the_workflow_verbatim() -> None:
    page = parse_page(DOCS / "how-to" / "ci-matrix.md")
    shown = [b.text for b in page.blocks if b.lang == "yaml" and b.header_path]
    assert WORKFLOW.read_text() in shown, "ci-matrix.md must show docs/ci/github-actions.yml"


def test_live_workflow() -> None:
    """The live suite on a schedule and on demand, the token from secrets, always reaped."""
    import yaml

    flow = yaml.safe_load(LIVE_WORKFLOW.read_text())
    triggers = flow.get("on") or flow.get(True)
    assert triggers["schedule"][0]["cron"] and "workflow_dispatch" in triggers
    (job,) = flow["jobs"].values()
    env = dict(job.get("env", {}))
    assert env.get("MODAL_TOKEN_ID") == "${{ secrets.MODAL_TOKEN_ID }}"
    assert env.get("MODAL_TOKEN_SECRET") == "${{ secrets.MODAL_TOKEN_SECRET }}"
    steps = job["steps"]
    test_i = next(
        i for i, s in enumerate(steps) if "python -m pytest tests/live -m live" in s.get("run", "")
    )
    reap = [
        s for s in steps[test_i + 1 :] if "python -m pytest_modal_sandbox reap" in s.get("run", "")
    ]
    assert reap, "a step after the live suite must reap"
    assert str(reap[0].get("if", "")).replace("${{", "").replace("}}", "").strip() == "always()"
    # --all is safe only in the suite's own app, one live run at a time
    assert (
        "--app pytest-modal-sandbox-live" in reap[0]["run"] and "--backend modal" in reap[0]["run"]
    )
    assert flow["concurrency"]["group"] and not flow["concurrency"]["cancel-in-progress"]
    assert not re.search(r"(ak|as)-[A-Za-z0-9]{10,}", LIVE_WORKFLOW.read_text())


def test_live_page_shows_its_workflow_verbatim() -> None:
    page = parse_page(DOCS / "how-to" / "verify-against-modal.md")
    shown = [b.text for b in page.blocks if b.lang == "yaml" and b.header_path]
    assert LIVE_WORKFLOW.read_text() in shown, "verify-against-modal.md must show docs/ci/live.yml"
