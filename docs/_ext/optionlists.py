"""
Directives that document command-line options from the code that parses
them, so that the manual lists exactly the options the programs take::

    .. usage-options:: udptime.tap.Options
       :program: twistd udptime

renders every option of a L{twisted.python.usage.Options} subclass
(C{optFlags}, C{optParameters} and the C{opt_*} methods, as its C{--help}
shows them), and::

    .. argparse-options:: udptime.cli.buildParser
       :program: udptime

every argument of the L{argparse.ArgumentParser} that a function returns.
Each option becomes a Sphinx C{option} description under C{program}, so the
prose refers to it as C{:option:`twistd udptime --port`}, and a reference to
an option that no longer exists fails a nitpicky (C{-n}) build.

The reST is made by L{optionsText}, a pure function the tests call.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList


@dataclass(frozen=True)
class Option:
    """
    One command-line option, or a positional argument, as documented.

    @ivar names: how it is written, e.g. C{("-p", "--port")}; a positional
        argument has its placeholder alone, e.g. C{("HOST",)}.
    @ivar value: the placeholder of its value (C{"port"}), or C{""} for a
        flag or a positional argument.
    @ivar help: what it does, one line of plain text.
    @ivar default: its default, as text, or C{""} for none.
    """

    names: tuple[str, ...]
    value: str
    help: str
    default: str = ""


def resolve(dotted: str) -> Any:
    """
    The object a dotted name such as C{udptime.tap.Options} names.

    @raise ValueError: nothing has that name.
    """
    module, _, attribute = dotted.rpartition(".")
    if not module:
        raise ValueError(f"{dotted!r} is not a dotted name (module.attribute)")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot find {dotted!r}: {error}") from error


def usageOptions(optionsClass: type[Any]) -> list[Option]:
    """
    The options of a L{twisted.python.usage.Options} subclass, in the order
    of its C{--help}: the long names it registered (flags, parameters and
    C{opt_*} methods, with their one-letter synonyms), their documentation
    (the coercer's C{coerceDoc} added, as C{--help} adds it) and defaults;
    not those its C{hidden} attribute names, which C{--help} leaves out
    too.
    """
    options = optionsClass()
    hidden = frozenset(getattr(options, "hidden", ()))
    short: dict[str, str] = {}
    for name, longName in options.synonyms.items():
        if name != longName and len(name) == 1:
            short[longName] = name
    coerceDocs: dict[str, str] = {}
    for parameter in getattr(options, "optParameters", []):
        if len(parameter) > 4 and parameter[4] is not None:
            coerceDocs[parameter[0]] = getattr(parameter[4], "coerceDoc", "")
    parameters = {parameter[0] for parameter in getattr(options, "optParameters", [])}
    flags = {flag[0] for flag in getattr(options, "optFlags", [])}
    found = []
    for registered in sorted(
        options.longOpt, key=lambda name: _declared(name, parameters, flags)
    ):
        name = registered.rstrip("=")
        if name in hidden:
            continue
        takesValue = registered.endswith("=")
        names: tuple[str, ...] = (f"-{short[name]}",) if name in short else ()
        names += (f"--{name}",)
        text = " ".join(str(options.docs.get(name) or "").split())
        extra = coerceDocs.get(name, "")
        if extra and extra not in text:
            text = f"{_sentence(text)} {extra}".strip()
        default = options.defaults.get(name) if takesValue else None
        found.append(
            Option(
                names=names,
                value=_placeholder(options, name) if takesValue else "",
                help=text,
                default=_shown(default),
            )
        )
    return found


def _declared(registered: str, parameters: set[str], flags: set[str]) -> int:
    """
    Where an option of a L{usage.Options} goes in the list: its parameters
    (in the order declared), then its flags, then its C{opt_*} methods, and
    C{--help} and C{--version} last.  (C{sorted} keeps the order within.)
    """
    name = registered.rstrip("=")
    if name in ("help", "version"):
        return 3
    if name in parameters:
        return 0
    if name in flags:
        return 1
    return 2


def _placeholder(options: Any, name: str) -> str:
    """
    What the value of option C{name} is called: the parameter name of its
    C{opt_*} method, or else the last word of the option's name.
    """
    method = getattr(options, "opt_" + name.replace("-", "_"), None)
    if method is not None:
        arguments = list(inspect.signature(method).parameters)
        if arguments:
            return arguments[0]
    return name.split("-")[-1]


def argparseOptions(parser: argparse.ArgumentParser) -> list[Option]:
    """
    The arguments of C{parser}: the positional ones first, then the options,
    in the order they were added.
    """
    positional = []
    optional = []
    for action in parser._actions:
        helpText = " ".join((action.help or "").split())
        if helpText == argparse.SUPPRESS:
            continue
        if action.option_strings:
            value = ""
            if action.nargs != 0:
                value = str(action.metavar or action.dest).lower()
            default = action.default
            if action.nargs == 0 or default in (None, argparse.SUPPRESS):
                default = None
            optional.append(
                Option(
                    names=tuple(action.option_strings),
                    value=value,
                    help=helpText,
                    default=_shown(default),
                )
            )
        else:
            name = str(action.metavar or action.dest).upper()
            positional.append(Option(names=(name,), value="", help=helpText))
    return positional + optional


def _sentence(text: str) -> str:
    if text and text[-1] not in ".!?":
        return text + "."
    return text


def _shown(default: object) -> str:
    if default is None or default == "" or default == []:
        return ""
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, bytes):
        return default.decode("ascii", "backslashreplace")
    return str(default)


def _escaped(text: str) -> str:
    """
    C{text} with the characters that mean something in reST escaped.
    """
    for special in "\\*`|_":
        text = text.replace(special, "\\" + special)
    return text


def optionsText(program: str, options: list[Option]) -> list[str]:
    """
    The reST that documents C{options} of C{program}: a C{program}
    directive, then one C{option} directive per option, its names (with
    their value placeholders) as the signature and its help and default as
    the description.
    """
    lines = [f".. program:: {program}", ""]
    for option in options:
        value = f" <{option.value}>" if option.value else ""
        signature = ", ".join(name + value for name in option.names)
        lines += [f".. option:: {signature}", ""]
        text = _escaped(_sentence(option.help[:1].upper() + option.help[1:]))
        if not text:
            text = "(No description.)"
        if option.default and "default" not in option.help.lower():
            text += f" Default: ``{option.default}``."
        lines += ["   " + text, ""]
    return lines


class _OptionsDirective(Directive):  # type: ignore[misc]
    required_arguments = 1
    has_content = False
    option_spec = {"program": directives.unchanged_required}

    def gather(self) -> list[Option]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        if "program" not in self.options:
            raise self.error(f"{self.name}: give the program's name (:program:)")
        try:
            found = self.gather()
        except ValueError as error:
            raise self.error(f"{self.name}: {error}") from error
        source = self.state_machine.get_source_and_line(self.lineno)[0]
        text = StringList(
            optionsText(self.options["program"], found), source=str(source)
        )
        container = nodes.container(classes=["option-list"])
        self.state.nested_parse(text, self.content_offset, container)
        return list(container.children)


class UsageOptionsDirective(_OptionsDirective):
    """
    C{.. usage-options:: dotted.name.of.OptionsClass}, with C{:program:}.
    """

    def gather(self) -> list[Option]:
        return usageOptions(resolve(self.arguments[0]))


class ArgparseOptionsDirective(_OptionsDirective):
    """
    C{.. argparse-options:: dotted.name.of.parserFactory}, with C{:program:}.
    """

    def gather(self) -> list[Option]:
        parser = resolve(self.arguments[0])()
        if not isinstance(parser, argparse.ArgumentParser):
            raise ValueError(f"{self.arguments[0]}() is not an ArgumentParser")
        return argparseOptions(parser)


DIRECTIVES: dict[str, type[Directive]] = {
    "usage-options": UsageOptionsDirective,
    "argparse-options": ArgparseOptionsDirective,
}
"""The directives, by name."""


def setup(app: Any) -> dict[str, Any]:
    """
    The Sphinx extension: register the directives.
    """
    for name, directive in DIRECTIVES.items():
        app.add_directive(name, directive)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
