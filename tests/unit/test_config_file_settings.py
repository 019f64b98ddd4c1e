"""The daemons' settings: every flag has one file key and one variable, and flags > env > file > defaults."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner

from glassmesh.cli.control_cmd import control
from glassmesh.cli.proxy_cmd import proxy
from glassmesh.settings import daemon_command, env_name, file_key, file_options, schema


@daemon_command()
@click.option("--workers", default=1, type=click.IntRange(1, 8))
@click.option("--dns-server", "servers", multiple=True)
@click.option("--log", type=click.Path(dir_okay=False), default=None)
@click.option("-v", "--verbose", is_flag=True)
def toy(workers: int, servers: tuple[str, ...], log: str | None, verbose: bool) -> None:
    click.echo(f"workers={workers} servers={','.join(servers)} log={log} verbose={verbose}")


def run(args: list[str], env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(toy, args, env={"GLASSMESH_CONFIG_DIR": "/nonexistent", **(env or {})})


def conf(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    p = tmp_path / "toy.yaml"
    p.write_text(text)
    p.chmod(mode)
    return str(p)


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    assert run([]).output == "workers=1 servers= log=None verbose=False\n"
    f = conf(tmp_path, "workers: 2\ndns_server: [a, b]\nlog: x.log\nverbose: true\n")
    assert run(["--config-file", f]).output == f"workers=2 servers=a,b log={tmp_path}/x.log verbose=True\n"
    env = {"GLASSMESH_TOY_WORKERS": "3", "GLASSMESH_TOY_DNS_SERVER": "c d", "GLASSMESH_TOY_VERBOSE": "0"}
    assert run(["--config-file", f], env).output == f"workers=3 servers=c,d log={tmp_path}/x.log verbose=False\n"
    out = run(["--config-file", f, "--workers", "4", "--dns-server", "e", "-v"], env).output
    assert out == f"workers=4 servers=e log={tmp_path}/x.log verbose=True\n"


def test_default_file_is_read_from_the_config_dir(tmp_path: Path) -> None:
    conf(tmp_path, "workers: 5\n")
    r = CliRunner().invoke(toy, [], env={"GLASSMESH_CONFIG_DIR": str(tmp_path)})
    assert r.output.startswith("workers=5 "), r.output
    r = CliRunner().invoke(toy, [], env={"GLASSMESH_CONFIG_DIR": str(tmp_path), "GLASSMESH_TOY_CONFIG_FILE":
                                         str(tmp_path / "missing.yaml")})
    assert r.exit_code != 0 and "cannot read config file" in r.output


@pytest.mark.parametrize(("text", "expect"), [
    ("workers: 9\n", "toy.yaml:1: workers: Expected int <= 8"),
    ("workers: '2'\n", "toy.yaml:1: workers: Expected int, got str"),
    ("\n\nworkers: 2\nworkers: 3\n", "toy.yaml:4: workers: duplicate key"),
    ("verbose: true\nwrokers: 2\n", "toy.yaml:2: wrokers: unknown key (did you mean workers?)"),
    ("zzz: 1\n", "toy.yaml:1: zzz: unknown key (known keys: dns_server, log, verbose, workers)"),
    ("workers: [\n", "toy.yaml:2: (top): not valid YAML"),
    ("- workers\n", "toy.yaml:1: (top): the file must be a mapping"),
    ("dns_server: a\n", "toy.yaml:1: dns_server: Expected array, got str"),
])
def test_file_errors_name_file_line_and_key(tmp_path: Path, text: str, expect: str) -> None:
    r = run(["--config-file", conf(tmp_path, text)])
    assert r.exit_code == 3 and expect in r.output, r.output


def test_every_flag_of_both_daemons_has_a_key_and_a_variable() -> None:
    names: set[str] = set()
    for cmd, prefix in ((proxy, "GLASSMESH_PROXY_"), (control, "GLASSMESH_CONTROL_")):
        fields = set(schema(cmd).__struct_fields__)
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.name == "help":
                continue
            assert p.envvar == env_name(str(cmd.name), p) and str(p.envvar).startswith(prefix)
            names.add(str(p.envvar))
            if not p.hidden and p.name != "config_file":
                assert file_key(p) in fields
        assert fields == {file_key(p) for p in file_options(cmd)}
    # No clash with the variables the client commands and the CA already read.
    assert not names & {"GLASSMESH_CONTROL", "GLASSMESH_CA_PASSPHRASE", "GLASSMESH_CONFIG_DIR"}
    assert "GLASSMESH_PROXY_DATA" in names and "GLASSMESH_CONTROL_DATA" in names


def test_schema_types_follow_click_types() -> None:
    s = schema(proxy)
    msgspec.convert({"workers": 4, "control": "https://x:4201"}, s)
    with pytest.raises(msgspec.ValidationError, match="<= 64"):
        msgspec.convert({"workers": 65}, s)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"config_file": "x"}, s)
