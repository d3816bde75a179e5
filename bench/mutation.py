"""
Mutation testing of udptime's codecs (NTP, NTS, text) and policy: how many
small changes to the code its own tests notice.

One command, from the project's top directory, in the virtualenv where
udptime is installed with its C{test} extra::

    python bench/mutation.py                   # every module of TARGETS
    python bench/mutation.py policy            # one module
    python bench/mutation.py --sample 100      # 100 mutants per module
    python bench/mutation.py --list ntp        # the mutants, not run

Each mutant is one change to one module, made in its syntax tree:

  - a comparison's boundary or sense (C{<} to C{<=}, C{==} to C{!=}, C{is}
    to C{is not}, C{in} to C{not in}, and back);
  - an arithmetic, bitwise or shift operator (C{+} and C{-}, C{*} and
    C{/}, C{<<} and C{>>}, C{&} and C{|}, ...), in expressions and
    augmented assignments;
  - C{and} to C{or} and back; a C{not}, a unary minus or C{~} removed;
  - a constant: an integer plus and minus one, a float plus one, C{True}
    and C{False} swapped, a string or bytes constant (not a docstring, not
    a piece of an f-string) changed;
  - a C{return} of a value made C{return None};
  - a statement deleted: a call made for its effect, a store into a
    container or an attribute, an augmented assignment, a C{del}, a
    C{raise}.

Type annotations, docstrings and C{__slots__} are left alone.

The module's own fast tests (L{TARGETS}) run once on the unchanged
module, traced, to find which tests execute which lines.  A mutant on a
line no test reaches survives without being run (C{not covered}).  Every
other mutant runs in a child process forked from this one (which has
imported pytest, Hypothesis and Twisted already): the child puts the
mutated module in C{sys.modules}, then runs with pytest the tests that
executed the mutant's lines (all of the module's tests when a line ran at
import), stopping at the first failure.  A mutant is killed
when a test fails, when the mutated module cannot be imported, or when the
tests take longer than C{--timeout}.  Hypothesis runs derandomised, with no
example database, so that a run is repeatable; the fuzzing properties of
the NTS tests (L{tests.fuzzing}) run C{--fuzz-examples} examples each, 50
by default, which keeps a mutant's run short.

The score of a module is the killed mutants over all of them.  Survivors
are listed with their line; some are equivalent (no test could tell them
apart from the original), and the development documentation names those.
The run is bounded: C{--budget} seconds in all, after which the mutants not
run yet are reported as such.  It is not part of the test suite or of CI:
it takes minutes, and its numbers are for people.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Final

TOP = Path(__file__).resolve().parent.parent

TARGETS: dict[str, tuple[str, ...]] = {
    "ntp": (
        "tests/test_ntp.py",
        "tests/test_ntp_server.py",
        "tests/test_ntp_boundaries.py",
    ),
    "policy": ("tests/test_policy.py", "tests/test_policy_boundaries.py"),
    "text": ("tests/test_text.py", "tests/test_text_boundaries.py"),
    "nts": (
        "tests/test_nts.py",
        "tests/test_ntsserver.py",
        "tests/test_nts_boundaries.py",
    ),
    "ntscookie": (
        "tests/test_ntscookie.py",
        "tests/test_ntscookie_boundaries.py",
        "tests/test_ntskeys.py",
        "tests/test_nts.py",
    ),
}
"""The modules of C{udptime} mutated, and the fast test modules that test
each (its unit tests, no real peers)."""

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}

_OPERATOR_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitAnd,
}

_SYMBOLS: dict[type[ast.AST], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.And: "and",
    ast.Or: "or",
}


@dataclass(frozen=True)
class Mutant:
    """
    One change to a module.

    @ivar index: its place among the module's mutants (in the order of
        L{MutantMaker}'s walk).
    @ivar line: the first line of the changed code.
    @ivar endLine: its last line.
    @ivar description: what was changed, e.g. C{"< -> <="}.
    """

    index: int
    line: int
    endLine: int
    description: str


class MutantMaker(ast.NodeTransformer):
    """
    Walks a module's syntax tree, counting the mutants it offers
    (L{found}); given a C{target} index, makes that one change.
    """

    def __init__(self, target: int | None = None) -> None:
        self.target = target
        self.found: list[Mutant] = []
        self.applied = False

    def offer(self, node: ast.AST, description: str) -> bool:
        """
        Note one possible change at C{node}: whether it is the one to make.
        """
        index = len(self.found)
        line = getattr(node, "lineno", 0)
        self.found.append(
            Mutant(index, line, getattr(node, "end_lineno", line), description)
        )
        if index == self.target:
            self.applied = True
            return True
        return False

    # Left alone: annotations, docstrings, __slots__, __future__ imports.

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._visitScope(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._visitScope(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = self._visitBody(node.body)
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._visitBody(node.body)
        return node

    def _visitScope(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [
            None if d is None else self.visit(d) for d in node.args.kw_defaults
        ]
        node.body = self._visitBody(node.body)
        return node

    def _visitBody(self, body: list[ast.stmt]) -> list[ast.stmt]:
        result: list[ast.stmt] = []
        for position, statement in enumerate(body):
            if _isDocstring(statement) and position == 0:
                result.append(statement)
                continue
            if isinstance(statement, ast.Expr) and isinstance(
                statement.value, ast.Constant
            ):
                result.append(statement)  # an attribute's docstring
                continue
            visited = self.visit(statement)
            if isinstance(visited, list):
                result.extend(visited)
            elif visited is not None:
                result.append(visited)
        return result or [ast.Pass()]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None and not _isTypeUnion(node.value):
            node.value = self.visit(node.value)
            if self._deletable(node.target) and self.offer(node, "statement deleted"):
                return _pass(node)
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            return node
        if _isTypeUnion(node.value):
            return node
        node.value = self.visit(node.value)
        node.targets = [self.visit(t) for t in node.targets]
        if all(self._deletable(t) for t in node.targets) and self.offer(
            node, "statement deleted"
        ):
            return _pass(node)
        return node

    def _deletable(self, target: ast.expr) -> bool:
        return isinstance(target, ast.Subscript | ast.Attribute)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        node.value = self.visit(node.value)
        swap = _OPERATOR_SWAPS.get(type(node.op))
        if swap is not None and self.offer(
            node, f"{_SYMBOLS[type(node.op)]}= -> {_SYMBOLS[swap]}="
        ):
            node.op = swap()
            return node
        if self.offer(node, "statement deleted"):
            return _pass(node)
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        node.value = self.visit(node.value)
        if isinstance(node.value, ast.Call) and self.offer(node, "call deleted"):
            return _pass(node)
        return node

    def visit_Delete(self, node: ast.Delete) -> ast.AST:
        self.generic_visit(node)
        if self.offer(node, "del deleted"):
            return _pass(node)
        return node

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if self.offer(node, "raise deleted"):
            return _pass(node)
        return node

    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is None:
            return node
        node.value = self.visit(node.value)
        if not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ) and self.offer(node, "return value -> return None"):
            node.value = ast.Constant(None)
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        # Only the expressions of an f-string, not its text.
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                value.value = self.visit(value.value)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for position, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None and self.offer(
                node, f"{_SYMBOLS[type(op)]} -> {_SYMBOLS[swap]}"
            ):
                node.ops[position] = swap()
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = _OPERATOR_SWAPS.get(type(node.op))
        if swap is not None and self.offer(
            node, f"{_SYMBOLS[type(node.op)]} -> {_SYMBOLS[swap]}"
        ):
            node.op = swap()
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        swap: type[ast.boolop] = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self.offer(node, f"{_SYMBOLS[type(node.op)]} -> {_SYMBOLS[swap]}"):
            node.op = swap()
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not | ast.USub | ast.Invert):
            symbol = {ast.Not: "not ", ast.USub: "-", ast.Invert: "~"}[type(node.op)]
            if self.offer(node, f"{symbol.strip()} removed"):
                return node.operand
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            if self.offer(node, f"{value} -> {not value}"):
                return _constant(node, not value)
        elif isinstance(value, int):
            for changed in (value + 1, value - 1):
                if self.offer(node, f"{value} -> {changed}"):
                    return _constant(node, changed)
        elif isinstance(value, float):
            if self.offer(node, f"{value!r} -> {value + 1.0!r}"):
                return _constant(node, value + 1.0)
        elif isinstance(value, str | bytes) and value:
            text = _changedText(value)
            if self.offer(node, f"{value!r} -> {text!r}"):
                return _constant(node, text)
        return node


def _changedText(value: str | bytes) -> str | bytes:
    """
    A string or bytes constant changed: reversed, or, when that changes
    nothing (a palindrome, one character), with its first character
    doubled.
    """
    if isinstance(value, str):
        changed: str = value[::-1]
        return changed if changed != value else value[:1] + value
    reversedBytes = value[::-1]
    return reversedBytes if reversedBytes != value else value[:1] + value


def _isDocstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _isTypeUnion(value: ast.expr) -> bool:
    """
    Whether C{value} is a union of types (C{bytes | Refusal}), as a type
    alias is written: left alone.
    """
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
        return all(
            _isTypeUnion(side)
            or isinstance(side, ast.Name | ast.Attribute | ast.Subscript)
            for side in (value.left, value.right)
        )
    return False


def _pass(node: ast.stmt) -> ast.stmt:
    return ast.copy_location(ast.Pass(), node)


def _constant(node: ast.Constant, value: Any) -> ast.Constant:
    return ast.copy_location(ast.Constant(value), node)


def listMutants(source: str) -> list[Mutant]:
    """
    Every mutant of the module whose source is C{source}.
    """
    maker = MutantMaker()
    maker.visit(ast.parse(source))
    return maker.found


def mutatedTree(source: str, index: int) -> ast.Module:
    """
    The syntax tree of C{source} with mutant C{index} applied.
    """
    maker = MutantMaker(index)
    tree = maker.visit(ast.parse(source))
    assert maker.applied, index
    assert isinstance(tree, ast.Module)
    return ast.fix_missing_locations(tree)


def _hypothesisProfile() -> None:
    """
    Make Hypothesis repeatable and patient in this process: the same
    examples every run, no database, no deadline (the machine is shared).
    """
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "mutation",
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    settings.load_profile("mutation")


def _installModule(name: str, path: Path, code: Any) -> ModuleType:
    """
    Execute C{code} as the module C{udptime.NAME} and put it in
    C{sys.modules} before anything imports the real one.
    """
    import importlib.util

    import udptime

    qualified = f"udptime.{name}"
    spec = importlib.util.spec_from_file_location(qualified, path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    setattr(udptime, name, module)
    exec(code, module.__dict__)
    return module


def _runTests(tests: Sequence[str], plugins: Sequence[object] = ()) -> int:
    """
    Run C{tests} (test modules, or pytest node ids) with pytest in this
    process, quietly, stopping at the first failure: pytest's exit status.
    """
    import pytest

    arguments = [
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "--no-header",
        *tests,
    ]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return int(pytest.main(arguments, plugins=list(plugins)))


IMPORTED: Final = "<import>"
"""Where a line ran that ran outside any test (importing, collecting)."""


class CurrentTest:
    """
    A pytest plugin that knows which test runs (by node id), for
    L{_traceLines}.
    """

    def __init__(self) -> None:
        self.current = IMPORTED
        self.order: list[str] = []

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        self.current = nodeid
        self.order.append(nodeid)

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        self.current = IMPORTED


def _traceLines(
    path: Path, tracker: CurrentTest, lines: dict[int, set[str]]
) -> Callable[[], None]:
    """
    Record in C{lines} the lines of C{path} that run from now on (in
    every thread), each with the tests (L{tracker}'s current one) that ran
    it; returns a function that stops recording.
    """
    filename = str(path)

    def note(line: int) -> None:
        found = lines.get(line)
        if found is None:
            found = lines[line] = set()
        found.add(tracker.current)

    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            note(frame.f_lineno)
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename == filename:
            note(frame.f_lineno)
            return local
        return None

    sys.settrace(tracer)
    threading.settrace(tracer)

    def stop() -> None:
        sys.settrace(None)
        threading.settrace(None)

    return stop


@dataclass
class Coverage:
    """
    Which tests ran each line of a module.

    @ivar lines: line number to the node ids of the tests that ran it
        (L{IMPORTED} for a line that ran outside any test).
    @ivar order: every test's node id, in the order they ran.
    """

    lines: dict[int, set[str]]
    order: list[str]

    def testsFor(
        self, mutant: Mutant, files: Sequence[str], names: ModuleNames
    ) -> list[str]:
        """
        The tests to run for C{mutant}: those that ran its lines, in their
        order; none when no test ran them.  A change to a line that ran
        only at import, the definition of a module constant, reaches the
        tests that ran the lines reading the constant (L{ModuleNames}) and
        every test of a test module that names it; any other change to a
        line that ran outside a test can reach every test: all of C{files}.
        """
        found: set[str] = set()
        for line in range(mutant.line, mutant.endLine + 1):
            found |= self.lines.get(line, set())
        if found <= {IMPORTED}:
            # Ran at import, or not traced at all (an element of a constant
            # tuple spread over several lines has no line of its own).
            reached = names.testsOfConstantAt(mutant.line, self)
            if reached is not None:
                return [test for test in self.order if test in reached]
            if names.constantAt(mutant.line) is not None:
                # A constant whose readers are not known (its name is read
                # elsewhere too): every test may read it.
                return list(files)
        if IMPORTED in found:
            return list(files)
        return [test for test in self.order if test in found]

    def testsOfLines(self, lines: Iterable[int]) -> set[str] | None:
        """
        The tests that ran any of C{lines}, or L{None} when one of them ran
        outside a test.
        """
        found: set[str] = set()
        for line in lines:
            found |= self.lines.get(line, set())
        if IMPORTED in found:
            return None
        return found


class ModuleNames:
    """
    Where a module's constants (names assigned once at module level) are
    read: by the functions of the module at run time, at import, and by
    the test modules.
    """

    def __init__(self, path: Path, testFiles: Sequence[str]) -> None:
        self.tree = ast.parse(path.read_text())
        self.testSources = {f: Path(f).read_text() for f in testFiles}
        self.otherSources = [
            other.read_text() for other in path.parent.glob("*.py") if other != path
        ]
        # name -> (lines read at run time, statements read at import)
        self.runtime: dict[str, set[int]] = {}
        self.atImport: dict[str, list[ast.stmt]] = {}
        for statement in self.tree.body:
            self._scan(statement, statement)

    def _scan(self, node: ast.AST, top: ast.stmt) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            # A default is read at import, and used by the calls that run
            # the function's body.
            bodyLines = set(range(node.lineno, (node.end_lineno or 0) + 1))
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                for inner in ast.walk(default) if default is not None else ():
                    if isinstance(inner, ast.Name):
                        self.runtime.setdefault(inner.id, set()).update(bodyLines)
            body: list[ast.AST] = (
                [node.body] if isinstance(node.body, ast.expr) else list(node.body)
            )
            if not isinstance(node, ast.Lambda):
                body.extend(node.decorator_list)
            for child in body:
                for inner in ast.walk(child):
                    if isinstance(inner, ast.Name):
                        line = getattr(inner, "lineno", 0)
                        self.runtime.setdefault(inner.id, set()).add(line)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            self.atImport.setdefault(node.id, []).append(top)
        for child in ast.iter_child_nodes(node):
            self._scan(child, top)

    def constantAt(self, line: int) -> str | None:
        """
        The name a module-level assignment on C{line} binds, if it binds
        one name.
        """
        for statement in self.tree.body:
            if statement.lineno <= line <= (statement.end_lineno or 0):
                if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                    target = statement.targets[0]
                elif isinstance(statement, ast.AnnAssign):
                    target = statement.target
                else:
                    return None
                return target.id if isinstance(target, ast.Name) else None
        return None

    def testsOfConstantAt(
        self, line: int, coverage: Coverage, seen: frozenset[str] = frozenset()
    ) -> set[str] | None:
        """
        The tests a change to the module constant defined on C{line} can
        reach, or L{None} when that is not known (not a constant, or read
        by code that runs at import other than another constant's
        definition: every test, then).
        """
        name = self.constantAt(line)
        if name is None or name in seen:
            return None
        word = re.compile(rf"\b{re.escape(name)}\b")
        if any(word.search(text) for text in self.otherSources):
            return None  # read by other modules of the package
        reached = coverage.testsOfLines(self.runtime.get(name, ()))
        if reached is None:
            return None
        for statement in self.atImport.get(name, []):
            if statement.lineno <= line <= (statement.end_lineno or 0):
                continue  # its own definition
            more = self.testsOfConstantAt(statement.lineno, coverage, seen | {name})
            if more is None:
                return None
            reached |= more
        for path, text in self.testSources.items():
            if word.search(text):
                prefix = os.path.relpath(path, TOP) + "::"
                reached.update(t for t in coverage.order if t.startswith(prefix))
        return reached


def _fork(child: Callable[[], int]) -> int:
    """
    Run C{child} in a forked process, which exits with its result: the
    process id.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        status = 70
        try:
            status = child()
        except BaseException:
            status = 71
        finally:
            os._exit(status)
    return pid


def baseline(name: str, path: Path, tests: Sequence[str], timeout: float) -> Coverage:
    """
    Run the tests of module C{name} on the unchanged module, tracing it:
    which tests run which lines.

    @raise SystemExit: the tests do not pass as they are.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".json") as report:

        def child() -> int:
            lines: dict[int, set[str]] = {}
            tracker = CurrentTest()
            source = path.read_text()
            stop = _traceLines(path, tracker, lines)
            _installModule(name, path, compile(source, str(path), "exec"))
            status = _runTests(tests, [tracker])
            stop()
            with open(report.name, "w") as output:
                json.dump(
                    {
                        "lines": {n: sorted(t) for n, t in lines.items()},
                        "order": tracker.order,
                    },
                    output,
                )
            return status

        status = _waitFor(_fork(child), timeout * 4)
        text = report.read()
    if status != 0 or not text:
        raise SystemExit(
            f"the tests of {name}.py fail unchanged (status {status}):"
            f" run pytest {' '.join(tests)}"
        )
    found = json.loads(text)
    return Coverage({int(n): set(t) for n, t in found["lines"].items()}, found["order"])


def _waitFor(pid: int, timeout: float) -> int | None:
    """
    The exit status of child C{pid}, or L{None} when it ran longer than
    C{timeout} seconds (it is then killed).
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.02)


@dataclass
class Outcome:
    """
    What became of one mutant.

    @ivar result: C{killed}, C{timeout}, C{error} (the mutated module does
        not import), C{survived}, C{not covered} or C{not run}.
    @ivar seconds: how long its tests ran.
    """

    mutant: Mutant
    result: str
    seconds: float = 0.0


@dataclass
class ModuleReport:
    """
    The outcome of every mutant of one module.
    """

    name: str
    tests: tuple[str, ...]
    total: int
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, *results: str) -> int:
        """
        How many outcomes are one of C{results}.
        """
        return sum(1 for o in self.outcomes if o.result in results)

    @property
    def score(self) -> float:
        """
        Killed mutants (by a failing test, a timeout or an import error)
        over the mutants run or not covered.
        """
        judged = len(self.outcomes) - self.count("not run")
        killed = self.count("killed", "timeout", "error")
        return killed / judged if judged else 0.0


def _runMutant(
    name: str, path: Path, source: str, mutant: Mutant, tests: Sequence[str]
) -> int:
    """
    Start mutant C{mutant}'s tests in a child process: its process id.
    """

    def child() -> int:
        try:
            code = compile(mutatedTree(source, mutant.index), str(path), "exec")
            _installModule(name, path, code)
        except Exception:
            return 3  # the mutant does not compile or import
        return _runTests(tests)

    return _fork(child)


@dataclass(frozen=True)
class RunOptions:
    """
    How to run the mutants (see L{main}'s options).

    @ivar sample: judge this many mutants of each module, or L{None} for
        all.
    @ivar seed: the seed of the sample.
    @ivar timeout: seconds a mutant's tests may take, or L{None} for five
        times the unchanged run.
    @ivar jobs: mutants run at the same time.
    @ivar deadline: C{time.monotonic()} after which no mutant is started.
    @ivar verbose: print every outcome, not only the survivors.
    """

    sample: int | None
    seed: int
    timeout: float | None
    jobs: int
    deadline: float
    verbose: bool


def mutate(name: str, options: RunOptions) -> ModuleReport:
    """
    Run the mutants of C{udptime/NAME.py}.
    """
    path = TOP / "udptime" / f"{name}.py"
    source = path.read_text()
    tests = tuple(str(TOP / t) for t in TARGETS[name])
    mutants = listMutants(source)
    report = ModuleReport(name, TARGETS[name], len(mutants))
    if options.sample is not None and options.sample < len(mutants):
        chosen = random.Random(options.seed).sample(mutants, options.sample)
        mutants = sorted(chosen, key=_index)
    started = time.monotonic()
    coverage = baseline(name, path, tests, options.timeout or 600.0)
    took = time.monotonic() - started
    timeout = options.timeout if options.timeout is not None else max(10.0, 5 * took)
    print(
        f"{name}.py: {report.total} mutants, {len(mutants)} to judge;"
        f" tests took {took:.1f} s unchanged; timeout {timeout:.0f} s",
        flush=True,
    )
    outcomes: dict[int, Outcome] = {}
    selected: dict[int, list[str]] = {}
    names = ModuleNames(path, tests)
    for mutant in mutants:
        selected[mutant.index] = coverage.testsFor(mutant, tests, names)
        if not selected[mutant.index]:
            outcomes[mutant.index] = Outcome(mutant, "not covered")
    pending = [m for m in mutants if m.index not in outcomes]
    running: dict[int, tuple[Mutant, float]] = {}
    try:
        while pending or running:
            while pending and len(running) < options.jobs:
                mutant = pending.pop(0)
                if time.monotonic() > options.deadline:
                    outcomes[mutant.index] = Outcome(mutant, "not run")
                    continue
                pid = _runMutant(name, path, source, mutant, selected[mutant.index])
                running[pid] = (mutant, time.monotonic())
            for pid, (mutant, began) in list(running.items()):
                result = _outcome(pid, time.monotonic() - began, timeout)
                if result is None:
                    continue
                del running[pid]
                spent = time.monotonic() - began
                outcomes[mutant.index] = Outcome(mutant, result, spent)
                if options.verbose or result == "survived":
                    print(
                        f"  {name}.py:{mutant.line}: {mutant.description}:"
                        f" {result} ({spent:.1f} s)",
                        flush=True,
                    )
            if running:
                time.sleep(0.05)
    finally:
        # Interrupted (^C, SIGTERM): stop the children this run started.
        for pid in running:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    report.outcomes = [outcomes[m.index] for m in mutants]
    return report


def _outcome(pid: int, spent: float, timeout: float) -> str | None:
    """
    What became of the mutant whose tests run in child C{pid}, started
    C{spent} seconds ago: L{None} while it runs within C{timeout}.
    """
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        code = os.waitstatus_to_exitcode(status)
        return {0: "survived", 3: "error"}.get(code, "killed")
    if spent > timeout:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "timeout"
    return None


def _index(mutant: Mutant) -> int:
    return mutant.index


def printReport(report: ModuleReport, source: str) -> None:
    """
    The score of a module and its surviving mutants, with their lines of
    C{source}.
    """
    lines = source.split("\n")
    survivors = [o for o in report.outcomes if o.result in ("survived", "not covered")]
    print(
        f"\nudptime/{report.name}.py ({', '.join(report.tests)}):"
        f" {report.total} mutants, {len(report.outcomes)} judged:"
        f" {report.count('killed')} killed, {report.count('timeout')} timed out,"
        f" {report.count('error')} do not import,"
        f" {report.count('survived')} survived,"
        f" {report.count('not covered')} not covered,"
        f" {report.count('not run')} not run (budget);"
        f" score {report.score:.1%}"
    )
    for outcome in survivors:
        mutant = outcome.mutant
        text = lines[mutant.line - 1].strip() if mutant.line else ""
        print(
            f"  {report.name}.py:{mutant.line}: {mutant.description}"
            f" [{outcome.result}]  {text}"
        )


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """
    The command line: mutate the modules, print scores and survivors.
    """
    parser = argparse.ArgumentParser(
        description="Mutation testing of udptime's codecs and policy."
    )
    parser.add_argument(
        "modules",
        nargs="*",
        help="modules of udptime to mutate (default: " + ", ".join(TARGETS) + ")",
    )
    parser.add_argument(
        "--sample", type=int, help="judge this many mutants per module, at random"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of --sample")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds a mutant's tests may take (default: 5x the unchanged run)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=3600.0,
        help="seconds for the whole run; mutants left are reported as not run",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="mutants run at the same time"
    )
    parser.add_argument(
        "--fuzz-examples",
        type=int,
        default=50,
        help="examples per property of tests.fuzzing's settings, as"
        " UDPTIME_FUZZ_EXAMPLES (default 50: the NTS tests' fuzzers)",
    )
    parser.add_argument("--json", type=Path, help="write the outcomes there")
    parser.add_argument("--list", action="store_true", help="list the mutants")
    parser.add_argument("-v", "--verbose", action="store_true")
    options = parser.parse_args(argv)
    names: list[str] = list(options.modules) or list(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"no tests known for {', '.join(sorted(unknown))}")
    if options.list:
        for name in names:
            for mutant in listMutants((TOP / "udptime" / f"{name}.py").read_text()):
                print(f"{name}.py:{mutant.line}: {mutant.description}")
        return 0
    os.chdir(TOP)
    sys.path.insert(0, str(TOP))
    os.environ.pop("UDPTIME_REQUIRE_PEERS", None)
    os.environ["UDPTIME_FUZZ_EXAMPLES"] = str(options.fuzz_examples)
    _hypothesisProfile()
    # What every child needs, imported once here.
    import pytest  # noqa: F401
    import twisted.trial.unittest  # noqa: F401

    run = RunOptions(
        sample=options.sample,
        seed=options.seed,
        timeout=options.timeout,
        jobs=options.jobs,
        deadline=time.monotonic() + options.budget,
        verbose=options.verbose,
    )
    signal.signal(signal.SIGTERM, _terminated)
    reports: list[ModuleReport] = []
    for name in names:
        # Each module's report as soon as it is done (and in the JSON file),
        # so that a run stopped half way still tells what it found.
        reports.append(mutate(name, run))
        printReport(reports[-1], (TOP / "udptime" / f"{name}.py").read_text())
        if options.json is not None:
            options.json.write_text(
                json.dumps([_asJSON(r) for r in reports], indent=1) + "\n"
            )
    if len(reports) > 1:
        print()
        for report in reports:
            print(f"udptime/{report.name}.py: score {report.score:.1%}")
    return 0


def _asJSON(report: ModuleReport) -> dict[str, object]:
    return {
        "module": f"udptime/{report.name}.py",
        "tests": list(report.tests),
        "mutants": report.total,
        "score": report.score,
        "outcomes": [asdict(o) for o in report.outcomes],
    }


if __name__ == "__main__":
    sys.exit(main())
