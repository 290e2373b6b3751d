"""The README and docs/getting-started.md show commands that parse as written: every `movierec`
line names a real subcommand and only options it has, with values of the right type (typer's own
parser, no command is run). The README links only to files inside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from movierec.cli import app

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "docs" / "getting-started.md", REPO / "docs" / "design.md"]


def _commands(path: Path) -> list[str]:
    """`movierec ...` lines inside ```sh blocks, comments and shell continuations resolved."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("movierec ") or line == "movierec":
                out.append(line)
    return out


class BadCommand(ValueError):
    pass


def _python_type(path: list[str], param: str) -> type | None:
    """The annotated Python type of ``param`` of the command at ``path`` (int, float, str, ...)."""
    import typing

    typer_app = app
    for name in path[:-1]:
        typer_app = next(g.typer_instance for g in typer_app.registered_groups if g.name == name)
    info = next(c for c in typer_app.registered_commands if (c.name or c.callback.__name__.replace("_", "-")) == path[-1])
    hint = typing.get_type_hints(info.callback, include_extras=True).get(param)
    while typing.get_origin(hint) in (typing.Annotated, typing.Union) or type(hint).__name__ == "UnionType":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint if isinstance(hint, type) else None


def _parse(args: list[str]) -> None:
    """Check ``args`` against the CLI's own command tree: subcommand names, option names, value
    types (each option's converter) and required options. Raises :class:`BadCommand`."""
    cmd = typer.main.get_command(app)
    args = list(args)
    while args and args[0] in ("-v", "--verbose"):
        args.pop(0)
    path: list[str] = []
    while getattr(cmd, "commands", None) is not None:  # a group: descend by name
        if not args or args[0] not in cmd.commands:
            raise BadCommand(f"no such command {args[0] if args else ''!r}")
        path.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    by_opt = {o: p for p in cmd.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]}
    positional = [p for p in cmd.params if p.param_type_name == "argument"]
    seen: set[str] = set()
    while args:
        tok = args.pop(0)
        if tok.startswith("-"):
            name, _, inline = tok.partition("=")
            param = by_opt.get(name)
            if param is None:
                raise BadCommand(f"{cmd.name}: no option {name!r}")
            if not getattr(param, "is_flag", False):
                value = inline or (args.pop(0) if args else None)
                if value is None:
                    raise BadCommand(f"{cmd.name}: {name} needs a value")
                kind = _python_type(path, param.name)
                if kind in (int, float):
                    try:
                        kind(value)
                    except ValueError:
                        raise BadCommand(f"{cmd.name}: {name} {value!r} is not a {kind.__name__}") from None
        else:
            if not positional:
                raise BadCommand(f"{cmd.name}: unexpected argument {tok!r}")
            param = positional.pop(0)
        seen.add(param.name)
    missing = [p.name for p in cmd.params if p.required and p.name not in seen]
    if missing:
        raise BadCommand(f"{cmd.name}: missing {missing}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_parse(doc: Path) -> None:
    if not doc.is_file():
        pytest.skip(f"{doc.name} missing")
    commands = _commands(doc)
    assert doc.name == "design.md" or commands, f"{doc.name} shows no movierec command"
    for line in commands:
        args = shlex.split(line)[1:]
        if args == ["--version"]:
            continue
        try:
            _parse(args)
        except BadCommand as e:
            raise AssertionError(f"{doc.name}: {line!r}: {e}") from None


def test_readme_links_stay_inside_the_repository() -> None:
    text = (REPO / "README.md").read_text()
    assert "shared/DESIGN.md" not in text
    for target in re.findall(r"`((?:docs|benchmarks|configs|serving|movierec)/[^`\s]+\.(?:md|yaml|py))`", text):
        assert (REPO / target).is_file(), target
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert not target.startswith(("http", "..")), target
        assert (REPO / target).exists(), target


def test_the_parser_check_catches_bad_commands() -> None:
    for bad in (["split", "--nope"], ["nosuch"], ["config", "shw"], ["evaluate", "--model", "m", "--test", "t", "--k", "ten"],
                ["evaluate", "--model", "m"], ["split", "--out", "d", "--json", "x"]):
        with pytest.raises(BadCommand):
            _parse(bad)
    _parse(["config", "show", "--set", "a=1", "--set", "b=2"])
    _parse(["-v", "compare", "--train", "t", "--test", "x", "--json"])
