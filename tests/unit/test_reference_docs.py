"""docs/reference is complete and current: every command, flag and config field, as the code has them now."""

from __future__ import annotations

import re
from pathlib import Path

import click
import msgspec
import msgspec.inspect as mi

from glassmesh.cli.control_cmd import control
from glassmesh.cli.main import cli
from glassmesh.cli.proxy_cmd import proxy
from glassmesh.control.config import MeshConfig
from glassmesh.docs.reference import documents
from glassmesh.model.snapshot import Snapshot
from glassmesh.settings import env_name, file_key, file_options

REF = Path(__file__).resolve().parents[2] / "docs" / "reference"


def test_committed_reference_is_what_the_code_generates() -> None:
    stale = [name for name, text in documents().items()
             if not (REF / name).exists() or (REF / name).read_text() != text]
    assert not stale, f"docs/reference/{', '.join(stale)} stale: run `make reference` and commit the result"


def _commands(cmd: click.Command, path: str) -> list[tuple[str, click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _commands(sub, f"{path} {name}")
    return out


def test_every_command_and_flag_is_in_cli_md() -> None:
    text = (REF / "cli.md").read_text()
    sections = dict(re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    for path, cmd in _commands(cli, "glassmesh"):
        assert path in sections, f"{path} is missing from docs/reference/cli.md"
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for opt in p.opts:
                    assert re.search(rf"`[^`]*{re.escape(opt)}\b", sections[path]), f"{path} {opt} missing"


def _fields(t: mi.Type, path: str = "") -> list[str]:
    """Every field path of a schema, found here independently of the generator."""
    if isinstance(t, mi.Metadata):
        return _fields(t.type, path)
    if isinstance(t, mi.StructType):
        out = []
        for f in t.fields:
            out += [f"{path}.{f.encode_name}" if path else f.encode_name, *_fields(f.type, f"{path}.{f.encode_name}"
                                                                                 if path else f.encode_name)]
        return out
    if isinstance(t, mi.UnionType):
        return [x for u in t.types for x in _fields(u, path)]
    if isinstance(t, mi.ListType):
        return _fields(t.item_type, f"{path}[]")
    if isinstance(t, mi.DictType):
        return _fields(t.value_type, f"{path}.<key>")
    return []


def test_every_field_of_mesh_yaml_and_snapshot_is_documented() -> None:
    for schema, doc in ((MeshConfig, "mesh-yaml.md"), (Snapshot, "snapshot.md")):
        text = (REF / doc).read_text()
        sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M))
        for path in _fields(mi.type_info(schema)):
            parent, _, name = path.rpartition(".")
            heading = f"`{parent}`" if parent else "(top level)"
            body = sections.get(heading, "")
            if not body:  # a struct met again elsewhere is documented once, under its first path
                body = text
            assert f"| `{name}` |" in body, f"{doc}: {path} missing"


def test_every_daemon_flag_has_its_key_and_variable_documented() -> None:
    for cmd in (proxy, control):
        text = (REF / f"{cmd.name}-yaml.md").read_text()
        for p in file_options(cmd):
            assert f"| `{file_key(p)}` | `--{file_key(p).replace('_', '-')}` | `{env_name(str(cmd.name), p)}` |" \
                in text


def test_struct_docs_come_from_meta_or_comments() -> None:
    """A field's description is its Meta(description), else its comment: one source, next to the field."""
    from glassmesh.docs.reference import field_comments, schema_doc

    class Demo(msgspec.Struct, kw_only=True):
        """Demo doc."""

        # Above, first line;
        # second line.
        a: int = 1
        b: str = ""  # trailing
        c: bool = False

    assert field_comments(Demo) == {"a": "Above, first line; second line.", "b": "trailing"}
    text = schema_doc(Demo, "T", "intro")
    assert "| `a` | integer | `1` | Above, first line; second line. |" in text
    assert "| `c` | boolean | `false` |  |" in text and "Demo doc." in text
