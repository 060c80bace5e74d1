"""The command-line reference, ``docs/cli.md``, generated from the Typer app.

:func:`cli_reference` walks the Click command objects of ``hts.cli.main:app``
(``typer.main.get_command``) and writes Markdown: the root command and then one
section per command in the app's order, each with its help text, usage line and
a table of its arguments and options (names with short flags, type or choices,
default, help). Hidden commands and options are left out.

The output depends on the code only: no terminal width, no colours or rich
markup, no ANSI codes. A default computed on the machine that imports the CLI
(its expression calls ``os.cpu_count()``, ``Path.home()``, ``Path.cwd()``,
``os.environ``, ``tempfile.gettempdir()``...; or it is a path under the home
folder) is never printed as its value: the table shows the default the option's
help documents (``... (default: one per core)``), else a name for it
("number of CPUs", ``~/...``).

Run it after changing a command::

    python -m hts.cli.reference            # rewrite docs/cli.md
    python -m hts.cli.reference --check    # exit 1 when docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, get_args

__all__ = ["cli_reference", "main", "DEFAULT_PATH"]

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = Path("docs") / "cli.md"
_REGENERATE = "python -m hts.cli.reference"


# --------------------------------------------------------------------------- Markdown text

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def _plain(text: str | None, markup_mode: str | None) -> str:
    """Help text as the terminal shows it, without styles: rich markup rendered, ANSI removed."""
    text = inspect.cleandoc(text or "").partition("\f")[0]
    text = "\n".join(line for line in text.split("\n") if line.strip() != "\b")
    text = _ANSI.sub("", text)
    if markup_mode == "rich":
        try:
            from rich.text import Text

            text = Text.from_markup(text).plain
        except Exception:  # not valid markup: Typer would fail to style it too; keep it as written
            pass
    return text


def _escape_prose(text: str, *, cell: bool = False) -> str:
    """One line of help text as Markdown that shows it as written: what Markdown would take
    for markup is escaped outside `code spans`; ``cell``: also ``|``, which ends a table cell."""

    def esc(s: str) -> str:
        s = s.replace("\\", "\\\\")
        for ch in "*[" + ("|" if cell else ""):
            s = s.replace(ch, "\\" + ch)
        s = re.sub(r"<(?=[A-Za-z/!?])", r"\\<", s)  # what could open an HTML tag
        # an underscore is emphasis only at a word's edge (snake_case stays as it is)
        return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", s)

    out, pos = [], 0
    for m in _CODE_SPAN.finditer(text):
        out.append(esc(text[pos : m.start()]))
        out.append(m.group(0).replace("|", "\\|") if cell else m.group(0))  # a pipe ends a cell even in code
        pos = m.end()
    out.append(esc(text[pos:]))
    line = "".join(out)
    if re.match(r"[#>+\-=]|\d+[.)](\s|$)", line):  # a heading, quote, list or rule marker at the start
        line = "\\" + line
    return line


def _code(text: str) -> str:
    """``text`` as a Markdown code span (safe in a table cell)."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _help_blocks(text: str) -> list[str]:
    """Help text as Markdown blocks: prose paragraphs joined into lines, indented paragraphs
    (example commands) as one code block per run of them."""
    blocks: list[str] = []
    code: list[str] = []

    def flush() -> None:
        if code:
            blocks.append("```text\n" + "\n".join(code) + "\n```")
            code.clear()

    for para in re.split(r"\n\s*\n", text.strip("\n")):
        lines = [line.rstrip() for line in para.split("\n") if line.strip()]
        if not lines:
            continue
        if all(line[:1] in (" ", "\t") for line in lines):
            code.extend(textwrap.dedent("\n".join(lines)).split("\n"))
            continue
        flush()
        blocks.append(_escape_prose(" ".join(line.strip() for line in lines)))
    flush()
    return blocks


def _one_line(text: str) -> str:
    """Help text squeezed into one table cell."""
    return _escape_prose(" ".join(text.split()), cell=True)


def _first_paragraph(text: str) -> str:
    return " ".join(re.split(r"\n\s*\n", text.strip())[0].split())


# --------------------------------------------------------------------------- defaults

_DOC_DEFAULT_PAREN = re.compile(r"\(\s*default\s*:?\s+", re.IGNORECASE)
_DOC_DEFAULT_SENTENCE = re.compile(r"(?:^|[.;(]\s*)default:\s+(.+?)(?=[.;](?:\s|$)|\)|$)", re.IGNORECASE)


def _documented_default(help_text: str) -> str | None:
    """The default a help text documents: ``... (default: one per core)``, ``(...; default: detected)``
    or ``Default: every plate.``"""
    m = _DOC_DEFAULT_PAREN.search(help_text)
    if m:
        depth, start = 1, m.end()
        for i in range(start, len(help_text)):
            depth += {"(": 1, ")": -1}.get(help_text[i], 0)
            if depth == 0:
                return " ".join(help_text[start:i].split()) or None
    m = _DOC_DEFAULT_SENTENCE.search(help_text)
    if m:
        return " ".join(m.group(1).split()) or None
    return None


# A default computed on the machine that imports the CLI: what the default's expression calls.
_MACHINE_CALLS = re.compile(
    r"cpu_count|sched_getaffinity|\bhome\(|\bcwd\(|getcwd|expanduser|\benviron\b|getenv|gettempdir|mkdtemp"
    r"|gethostname|getuser|getlogin"
)


def _default_expressions(command: Any) -> dict[str, str]:
    """Source text of each parameter's default in the command's function (``{"workers": "os.cpu_count()"}``);
    empty when the source cannot be read."""
    import ast

    callback = getattr(command, "callback", None)
    if callback is None:
        return {}
    try:
        fn = inspect.unwrap(callback)
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return {}
    node = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if node is None:
        return {}
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
    pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    return {arg.arg: ast.get_source_segment(source, d) or "" for arg, d in pairs}


def _machine_paths() -> list[tuple[str, str]]:
    """Folders whose path differs between machines, each with the name to print instead."""
    out = []
    for path, name in ((Path.cwd(), "."), (Path(tempfile.gettempdir()), "$TMPDIR"), (Path.home(), "~")):
        if len(path.parts) > 1:  # never rewrite "/" itself
            out.append((str(path), name))
    return sorted(out, key=lambda pn: -len(pn[0]))  # the most specific folder first


def _machine_value_text(value: Any, expression: str) -> str:
    """A machine-dependent default without a documented one: named, never printed as its value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "number of CPUs" if re.search(r"cpu_count|sched_getaffinity", expression) else "depends on the machine"
    text = _value_text(value)
    for path, name in _machine_paths():
        if text == path or text.startswith(path + os.sep):
            return _code(name + text[len(path) :])
    return "depends on the machine"


def _value_text(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def _default_cell(param: Any, help_text: str, expression: str = "") -> str:
    if param.required:
        return "required"
    show = getattr(param, "show_default", None)
    if isinstance(show, str) and show:
        return _one_line(show)
    default = param.default
    if isinstance(default, Enum) and default.name == "UNSET":  # Click 8.3's "no default" sentinel
        default = None
    documented = _documented_default(help_text)
    if getattr(param, "is_flag", False) and getattr(param, "is_bool_flag", True) and not getattr(param, "count", False):
        secondary = getattr(param, "secondary_opts", None) or []
        if secondary:
            return _code(param.opts[0] if default else secondary[0])
        return "on" if default else ""
    if callable(default) and not isinstance(default, type):
        return _one_line(documented) if documented else "(dynamic)"
    if default is None or (isinstance(default, (list, tuple)) and not default) or show is False:
        return _one_line(documented) if documented else ""
    values = list(default) if isinstance(default, (list, tuple)) else [default]
    home = str(Path.home())
    if _MACHINE_CALLS.search(expression) or (  # computed here, or a path under this home folder
        len(Path(home).parts) > 1 and any(_value_text(v).startswith(home + os.sep) for v in values)
    ):
        if documented:
            return _one_line(documented)
        return ", ".join(_machine_value_text(v, expression) for v in values)
    return ", ".join(_code(_value_text(v)) for v in values)


# --------------------------------------------------------------------------- types

_TYPE_NAMES = {"int": "integer", "integer": "integer", "float": "float", "str": "text", "string": "text",
               "text": "text", "bool": "boolean", "boolean": "boolean", "path": "path", "Path": "path",
               "PosixPath": "path", "WindowsPath": "path", "datetime": "datetime", "uuid": "UUID",
               "UUID": "UUID", "filename": "path", "file": "file", "directory": "path"}  # fmt: skip


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) or str(annotation)
    return _TYPE_NAMES.get(name, name.lower())


def _range_text(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f"{lo} ≤ x ≤ {hi}"
    return f"x ≥ {lo}" if lo is not None else f"x ≤ {hi}"


def _choices_text(choices: Any) -> str:
    return "one of " + ", ".join(_code(_value_text(c)) for c in choices)


def _type_cell(param: Any) -> str:
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return "flag"
    if getattr(param, "count", False):
        return "counter"
    desc = getattr(param, "type_descriptor", None)
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if desc is not None:  # Typer's own parameter classes (Typer >= 0.2x bundles its Click)
        if desc.is_choice and desc.choices is not None:
            text = _choices_text(desc.choices)
        else:
            annotation = desc.annotation
            if desc.is_list and get_args(annotation):
                annotation = get_args(annotation)[0]
            if desc.is_tuple:
                text = "(" + ", ".join(_type_name(a) for a in get_args(annotation)) + ")"
            elif desc.is_path:
                text = "path"
            else:
                text = _type_name(annotation)
    else:  # a Click parameter: its ParamType
        ptype = param.type
        lo = getattr(ptype, "min", lo)
        hi = getattr(ptype, "max", hi)
        if getattr(ptype, "choices", None) is not None:
            text = _choices_text(ptype.choices)
        elif type(ptype).__name__ == "Tuple":
            text = "(" + ", ".join(_type_name(getattr(t, "name", t)) for t in ptype.types) + ")"
        else:
            text = _type_name(getattr(ptype, "name", type(ptype).__name__))
    if lo is not None or hi is not None:
        text += f" ({_range_text(lo, hi)})"
    if getattr(param, "multiple", False):
        text += ", repeatable"
    elif param.param_type_name == "argument" and param.nargs == -1:
        text += ", any number"
    elif param.nargs > 1:
        text += f", {param.nargs} values"
    return text


# --------------------------------------------------------------------------- commands


def _markup_mode(command: Any) -> str | None:
    return getattr(command, "rich_markup_mode", None)


def _walk(command: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """(command, context) of ``command`` and of every visible subcommand, in the app's order."""
    yield command, ctx
    list_commands = getattr(command, "list_commands", None)
    if list_commands is None:
        return
    for name in list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or getattr(sub, "hidden", False):
            continue
        yield from _walk(sub, type(ctx)(sub, info_name=name, parent=ctx))


def _arg_display(param: Any, ctx: Any) -> str:
    """An argument's name as the usage line shows it (``source``, ``plates...``)."""
    try:
        piece = param.get_usage_pieces(ctx)[0]
    except Exception:
        piece = param.metavar or param.name
    name = piece.strip("{}[]").replace("]...", "...").replace("}...", "...")
    if param.nargs == -1 and not name.endswith("..."):
        name += "..."
    return name


def _param_row(param: Any, ctx: Any, markup_mode: str | None, expressions: dict[str, str]) -> str:
    help_text = _plain(getattr(param, "help", None), markup_mode)
    if param.param_type_name == "argument":
        names = _code(_arg_display(param, ctx))
    else:
        names = ", ".join(_code(o) for o in param.opts)
        if param.secondary_opts:
            names += " / " + ", ".join(_code(o) for o in param.secondary_opts)
    description = _one_line(help_text)
    envvar = param.envvar
    if envvar:
        envvars = [envvar] if isinstance(envvar, str) else list(envvar)
        description += (
            (" " if description else "") + "Environment variable: " + ", ".join(_code(e) for e in envvars) + "."
        )
    default = _default_cell(param, help_text, expressions.get(param.name or "", ""))
    return f"| {names} | {_type_cell(param)} | {default} | {description} |"


def _section(command: Any, ctx: Any) -> list[str]:
    mode = _markup_mode(command)
    path = ctx.command_path
    lines = [f"## `{path}`", ""]
    if getattr(command, "deprecated", False):
        lines += ["**Deprecated.**", ""]
    for block in _help_blocks(_plain(command.help, mode)):
        lines += [block, ""]
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    lines += ["```text", usage, "```", ""]
    help_names = set(ctx.help_option_names)
    params = [
        p for p in command.get_params(ctx)
        if not getattr(p, "hidden", False) and not (p.param_type_name == "option" and set(p.opts) <= help_names)
    ]  # fmt: skip
    params = [p for p in params if p.param_type_name == "argument"] + [
        p for p in params if p.param_type_name != "argument"
    ]
    if params:
        lines += ["| Argument / option | Type | Default | Description |", "|---|---|---|---|"]
        expressions = _default_expressions(command)
        lines += [_param_row(p, ctx, mode, expressions) for p in params]
        lines.append("")
    return lines


def _anchor(path: str) -> str:
    """GitHub's heading anchor for ``## `hts ingest` ``."""
    return re.sub(r"[^a-z0-9 _-]", "", path.lower()).replace(" ", "-")


def cli_reference(app: Any = None, prog_name: str | None = None) -> str:
    """The Markdown reference of the ``hts`` command line (what ``docs/cli.md`` holds).

    Parameters
    ----------
    app : typer.Typer, optional
        The app to document (default: ``hts.cli.main:app``).
    prog_name : str, optional
        The program name in headings and usage lines (default: the app's name, ``hts``).
    """
    import typer.main

    if app is None:
        from hts.cli.main import app
    prog_name = prog_name or getattr(app.info, "name", None) or "hts"
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name=prog_name)
    sections = list(_walk(root, ctx))

    lines = [
        f"# `{prog_name}` command-line reference",
        "",
        "<!-- Generated by `python -m hts.cli.reference` from the Typer app; do not edit by hand. -->",
        "",
        "This file is generated from the code: every command, argument and option below is read "
        f"from the Typer app `hts.cli.main:app`. Do not edit it by hand; after changing the CLI run "
        f"`{_REGENERATE}` to rewrite it (`{_REGENERATE} --check` and `tests/cli/test_reference.py` "
        "fail while it is out of date). Every command also takes `--help`, which prints the same "
        "text in the terminal. Defaults that depend on the machine are shown as their help describes them.",
        "",
    ]
    for command, sub_ctx in sections[1:]:
        path = sub_ctx.command_path
        summary = _first_paragraph(_plain(command.help, _markup_mode(command)))
        lines.append(f"- [`{path}`](#{_anchor(path)}): {_escape_prose(summary)}")
    lines.append("")
    for command, sub_ctx in sections:
        lines += _section(command, sub_ctx)
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- entry point


def _default_path() -> Path:
    """docs/cli.md of the source checkout this module lives in, else under the working folder."""
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "hts").is_dir():
        return _REPO / DEFAULT_PATH
    return DEFAULT_PATH


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hts.cli.reference",
        description="Write the command-line reference (Markdown) generated from the hts Typer app.",
    )
    parser.add_argument("path", nargs="?", type=Path, help=f"the file to write or check (default: {DEFAULT_PATH})")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the file differs from the code"
    )
    args = parser.parse_args(argv)
    path = args.path or _default_path()
    shown = args.path or DEFAULT_PATH
    text = cli_reference()
    if args.check:
        hint = _REGENERATE if args.path is None else f"{_REGENERATE} {args.path}"
        if not path.is_file():
            print(f"{shown} is missing: run `{hint}`", file=sys.stderr)
            return 1
        if path.read_text(encoding="utf-8") != text:
            print(f"{shown} is out of date: run `{hint}`", file=sys.stderr)
            return 1
        print(f"{shown} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
