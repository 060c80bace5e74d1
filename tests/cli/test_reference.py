"""docs/cli.md is generated from the Typer app (hts.cli.reference) and kept equal to it."""

from __future__ import annotations

import difflib
import enum
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
import typer.main

from hts.cli.main import app as hts_app
from hts.cli.reference import _one_line, _plain, cli_reference, main

REPO = Path(__file__).resolve().parents[2]
DOCS_CLI = REPO / "docs" / "cli.md"
REGENERATE = "python -m hts.cli.reference"


@pytest.fixture(scope="module")
def reference() -> str:
    return cli_reference()


def _visible_commands(app: typer.Typer) -> list[tuple[str, object]]:
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="hts")
    commands = []
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        if not getattr(cmd, "hidden", False):
            commands.append((name, cmd))
    return commands


# --------------------------------------------------------------------------- the checked-in file


def test_docs_cli_md_is_up_to_date(reference: str):
    assert DOCS_CLI.is_file(), f"docs/cli.md is missing: run `{REGENERATE}`"
    on_disk = DOCS_CLI.read_text(encoding="utf-8")
    diff = "".join(
        list(
            difflib.unified_diff(on_disk.splitlines(True), reference.splitlines(True), "docs/cli.md", "cli_reference()")
        )[:60]
    )
    assert on_disk == reference, f"docs/cli.md is out of date: run `{REGENERATE}`\n{diff}"


def test_docs_cli_md_says_it_is_generated():
    head = DOCS_CLI.read_text(encoding="utf-8")[:1500]
    assert "generated" in head and REGENERATE in head


# --------------------------------------------------------------------------- content of the real app


def test_every_command_has_a_section_in_app_order(reference: str):
    commands = _visible_commands(hts_app)
    assert len(commands) >= 10
    positions = []
    for name, _ in commands:
        heading = f"\n## `hts {name}`\n"
        assert heading in reference, f"no section for `hts {name}`"
        assert f"- [`hts {name}`](#hts-{name})" in reference, f"`hts {name}` missing from the list of commands"
        positions.append(reference.index(heading))
    assert positions == sorted(positions), "sections are not in the app's order"
    assert reference.index("\n## `hts`\n") < positions[0], "the root command comes first"


def test_every_visible_option_with_its_help(reference: str):
    for name, cmd in _visible_commands(hts_app):
        section = reference.split(f"\n## `hts {name}`\n", 1)[1].split("\n## ", 1)[0]
        assert f"hts {name} [OPTIONS]" in section, f"`hts {name}`: no usage line"
        mode = getattr(cmd, "rich_markup_mode", None)
        for param in cmd.params:
            if getattr(param, "hidden", False):
                for opt in param.opts:
                    assert f"`{opt}`" not in section, f"hidden option {opt} of `hts {name}` is documented"
                continue
            if param.param_type_name == "option":
                assert f"| `{param.opts[0]}`" in section, f"`hts {name}`: {param.opts[0]} missing"
            if param.help:
                assert _one_line(_plain(param.help, mode)) in section, f"`hts {name}`: help of {param.name} missing"


def test_root_options_and_known_texts(reference: str):
    root = reference.split("\n## `hts`\n", 1)[1].split("\n## ", 1)[0]
    assert "hts [OPTIONS] COMMAND [ARGS]..." in root
    assert "| `--version` | flag |  | Show the version and exit. |" in root
    assert "High-throughput-screening plate analyzer." in root
    assert "[dim]" not in reference and "[/]" not in reference and "[bold]" not in reference  # rich markup rendered
    assert "\x1b" not in reference


def test_no_machine_specific_text(reference: str):
    for path in {str(Path.home()), os.getcwd()}:
        if len(Path(path).parts) > 1:
            assert path not in reference


def test_output_is_the_same_in_another_environment(tmp_path: Path, reference: str):
    """A fresh process with another home folder, working folder, terminal width and colour
    settings, run as ``python -m hts.cli.reference PATH``, writes the same text."""
    out = tmp_path / "cli.md"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home), "USERPROFILE": str(home), "COLUMNS": "37", "LINES": "10", "TERM": "xterm-256color",
        "FORCE_COLOR": "1", "NO_COLOR": "", "PYTHONIOENCODING": "utf-8",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "hts.cli.reference", str(out)],
        cwd=home, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_text(encoding="utf-8") == reference


# --------------------------------------------------------------------------- --check and writing


def test_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: str):
    target = tmp_path / "docs" / "cli.md"
    assert main(["--check", str(target)]) == 1
    assert capsys.readouterr().err.strip() == f"{target} is missing: run `{REGENERATE} {target}`"

    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == reference
    assert main(["--check", str(target)]) == 0

    target.write_text(reference.replace("Show the version and exit.", "Show the version."), encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{target} is out of date: run `{REGENERATE}")


def test_check_message_for_the_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    from hts.cli import reference as ref

    monkeypatch.setattr(ref, "_default_path", lambda: tmp_path / "cli.md")
    (tmp_path / "cli.md").write_text("stale\n", encoding="utf-8")
    assert ref.main(["--check"]) == 1
    assert capsys.readouterr().err == "docs/cli.md is out of date: run `python -m hts.cli.reference`\n"


# --------------------------------------------------------------------------- the generator on a small app


class Shape(str, enum.Enum):
    round = "round"
    rod = "rod"


def _toy_app() -> typer.Typer:
    toy = typer.Typer(
        name="toy", help="A [bold]toy[/] app.\n\nSecond paragraph.", rich_markup_mode="rich", add_completion=False
    )

    @toy.callback()
    def _root(verbose: Annotated[bool, typer.Option("--verbose", "-V", help="Talk more.")] = False) -> None:
        pass

    @toy.command()
    def run(
        plates: Annotated[
            Optional[list[str]], typer.Argument(help="Plates. Default: all of them.", show_default=False)
        ] = None,
        shape: Annotated[Shape, typer.Option("--shape", "-s", help="Object shape.")] = Shape.round,
        size: Annotated[int, typer.Option("--size", min=8, max=64, help="Tile size | pixels.")] = 16,
        tag: Annotated[
            Optional[list[str]], typer.Option("--tag", help="A tag (repeatable).", show_default=False)
        ] = None,
        cache: Annotated[Path, typer.Option("--cache", help="Cache folder (default: ~/.cache/toy).")] = Path.home()
        / ".cache"
        / "toy",
        store: Annotated[Path, typer.Option("--store", help="Store folder.")] = Path.home() / "store",
        scratch: Annotated[Path, typer.Option("--scratch", help="Scratch folder.")] = Path(tempfile.gettempdir())
        / "toy",
        threads: Annotated[int, typer.Option("--threads", help="Threads per worker.")] = os.cpu_count() or 1,
        per_core: Annotated[int, typer.Option("--per-core", help="Tasks per core (a literal, not the CPU count).")] = 2,
        workers: Annotated[
            int, typer.Option("--workers", help="Worker processes (default: one per core).")
        ] = os.cpu_count() or 1,
        token: Annotated[
            str, typer.Option("--token", envvar="TOY_TOKEN", help="API token.", show_default="from TOY_TOKEN")
        ] = "",
        fast: Annotated[bool, typer.Option("--fast/--slow", help="Speed.")] = True,
        secret: Annotated[int, typer.Option("--secret", hidden=True, help="Not for users.")] = 3,
    ) -> None:
        """Run the [italic]toy[/].

        Examples:

          toy run A B
          toy run --size 32
        """

    @toy.command(hidden=True)
    def internal() -> None:
        """Hidden command."""

    @toy.command()
    def show(name: Annotated[str, typer.Argument(help="What to show: <plate>_x.")]) -> None:
        """Show something."""

    return toy


def test_generator_on_a_small_app():
    text = cli_reference(_toy_app())
    assert text.startswith("# `toy` command-line reference\n")
    # commands in order, hidden ones left out; the root's own options
    assert text.index("## `toy`\n") < text.index("## `toy run`") < text.index("## `toy show`")
    assert "internal" not in text and "Hidden command" not in text
    assert "| `--verbose`, `-V` | flag |  | Talk more. |" in text
    # help: rich markup rendered, paragraphs kept, indented examples as a code block
    assert "A toy app.\n\nSecond paragraph." in text
    assert "Run the toy.\n\nExamples:\n\n```text\ntoy run A B\ntoy run --size 32\n```" in text
    assert "```text\ntoy run [OPTIONS] [plates]...\n```" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["`plates...`"] == "| `plates...` | text, any number | all of them | Plates. Default: all of them. |"
    assert rows["`--shape`, `-s`"] == "| `--shape`, `-s` | one of `round`, `rod` | `round` | Object shape. |"
    assert rows["`--size`"] == "| `--size` | integer (8 ≤ x ≤ 64) | `16` | Tile size \\| pixels. |"
    assert rows["`--tag`"] == "| `--tag` | text, repeatable |  | A tag (repeatable). |"
    assert rows["`--fast` / `--slow`"] == "| `--fast` / `--slow` | flag | `--fast` | Speed. |"
    assert rows["`--token`"] == (
        "| `--token` | text | from TOY_TOKEN | API token. Environment variable: `TOY_TOKEN`. |"
    )
    # machine-dependent defaults: the documented default, or a placeholder, never the value
    assert rows["`--cache`"] == "| `--cache` | path | ~/.cache/toy | Cache folder (default: ~/.cache/toy). |"
    assert rows["`--store`"] == "| `--store` | path | `~/store` | Store folder. |"
    assert rows["`--scratch`"] == "| `--scratch` | path | `$TMPDIR/toy` | Scratch folder. |"
    assert rows["`--threads`"] == "| `--threads` | integer | number of CPUs | Threads per worker. |"
    assert rows["`--per-core`"] == "| `--per-core` | integer | `2` | Tasks per core (a literal, not the CPU count). |"
    assert rows["`--workers`"] == "| `--workers` | integer | one per core | Worker processes (default: one per core). |"
    assert str(Path.home()) not in text
    # hidden option left out; angle brackets and underscores escaped in prose
    assert "--secret" not in text and "Not for users" not in text
    assert rows["`name`"] == "| `name` | text | required | What to show: \\<plate>\\_x. |"
