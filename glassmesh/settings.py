"""Settings of the daemons (`glassmesh proxy`, `glassmesh control`): flags, environment, config file.

Every flag of these commands can also be set in the environment and in a
YAML file, with one rule for the names (flag `--access-log` of `glassmesh proxy`):

    environment   GLASSMESH_PROXY_ACCESS_LOG   (GLASSMESH_, the command, the flag; upper case, '-' -> '_')
    config file   access_log: ...              (the flag without '--', '-' -> '_')

The command's name is in the variable because one host runs both daemons and
an operator's shell already exports GLASSMESH_CONTROL (the operator API the
client commands call): a bare GLASSMESH_DATA would be read by both daemons.

Precedence is flags > environment > file > defaults, which is click's own
order (command line, envvar, ctx.default_map, default): the file is loaded by
the eager `--config-file` option, before any other option is processed, into
ctx.default_map. The file's schema is derived from the click options (type,
range, help), so the two cannot drift; its values then go through each
option's own conversion and checks, as a flag's would. Unlike a flag, a
file's error names the file, the line and the key, as mesh.yaml's do.

Without `--config-file` the command reads DIR/<command>.yaml when it exists,
DIR being $GLASSMESH_CONFIG_DIR or /etc/glassmesh. A file that others may
write is refused (it decides where keys go and whom the host trusts), and a
file holding a secret (the proxy's join token) must be 0600.

This module is shared by both daemons' commands and so imports nothing from
glassmesh.control or glassmesh.proxy.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import click
import msgspec

ENV_PREFIX = "GLASSMESH"
CONFIG_DIR_ENV = "GLASSMESH_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/etc/glassmesh"
CONFIG_FILE_OPTION = "config_file"


def config_dir() -> str:
    """Where the daemons' default config files are (tests point it away from /etc)."""
    return os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR


def long_flag(param: click.Parameter) -> str:
    """The flag a user types (`--data`), which names the key and the variable; not the Python name (data_dir)."""
    return max((o for o in param.opts if o.startswith("--")), key=len)


def file_key(param: click.Parameter) -> str:
    return long_flag(param)[2:].replace("-", "_")


def env_name(command: str, param: click.Parameter) -> str:
    return f"{ENV_PREFIX}_{command.upper()}_{file_key(param).upper()}"


def file_options(cmd: click.Command) -> list[click.Option]:
    """The options a config file may set: every documented one but --config-file itself."""
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden and p.name != CONFIG_FILE_OPTION
            and any(o.startswith("--") for o in p.opts) and p.name != "help"]


def value_type(p: click.Option) -> Any:
    """The YAML type of an option's value, with the range its click type enforces."""
    t = p.type
    if p.is_flag:
        base: Any = bool
    elif isinstance(t, click.IntRange):
        base = Annotated[int, msgspec.Meta(ge=t.min, le=t.max)] if t.min is not None and t.max is not None else int
    elif isinstance(t, click.FloatRange):
        base = Annotated[float, msgspec.Meta(ge=t.min, le=t.max)] if t.min is not None and t.max is not None else float
    elif t is click.INT:
        base = int
    elif t is click.FLOAT:
        base = float
    else:
        base = str
    return list[base] if p.multiple else base


def schema(cmd: click.Command) -> type[msgspec.Struct]:
    """The config file of `cmd` as a msgspec Struct (for the reference docs): one field per option."""
    fields: list[tuple[str, Any, Any]] = []
    for p in file_options(cmd):
        desc = (p.help or "").strip()
        default = p.default if isinstance(p.default, (int, float, str, bool)) else None
        typ = value_type(p)
        if default is None:
            typ = typ | None
        fields.append((file_key(p), Annotated[typ, msgspec.Meta(description=desc)], default))
    return msgspec.defstruct(f"{(cmd.name or 'command').capitalize()}File", fields, kw_only=True,
                             forbid_unknown_fields=True, frozen=True)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, where the operator will look for it (line 1: the file as a whole)."""

    line: int
    key: str
    message: str


class ConfigFileError(click.ClickException):
    """A config file that cannot be used: each problem as FILE:LINE: KEY: MESSAGE, and nothing started.

    Exit status 3, invalid config, as `glassmesh apply` gives for mesh.yaml (glassmesh/cli/exits.py).
    """

    exit_code = 3

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        self.lines = [f"{path}:{p.line}: {p.key or '(top)'}: {p.message}"
                      for p in sorted(problems, key=lambda p: p.line)]
        n = len(problems)
        super().__init__(f"{path}: {n} problem{'s' if n != 1 else ''}, nothing started")

    def show(self, file: Any = None) -> None:
        for line in self.lines:
            click.echo(line, err=True)
        click.echo(f"error: {self.message}", err=True)


def _friendly(msg: str) -> str:
    return msg.replace("`", "").replace(" | null", "")


def _check_mode(path: str, holds_secret: bool) -> list[Problem]:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o022:
        return [Problem(1, "", f"the file is writable by group or others (mode {mode:04o}): whoever can write it "
                               f"decides where this daemon keeps keys and whom it trusts; run `chmod 600 {path}`")]
    if holds_secret and mode & 0o077:
        return [Problem(1, "", f"the file holds a secret and is readable by group or others (mode {mode:04o}); "
                               f"run `chmod 600 {path}`")]
    return []


def load_file(ctx: click.Context, cmd: click.Command, path: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """Read and check `path`: the values it sets, by option name (ctx.default_map); ConfigFileError lists all
    problems."""
    import yaml  # only with a config file: a proxy started with flags alone does not load it (test_proxy_footprint)

    from glassmesh import yamlpos

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise click.ClickException(f"cannot read config file {path}: {e}") from None
    try:
        root, data = yamlpos.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigFileError(path, [Problem(mark.line + 1 if mark is not None else 1, "",
                                             f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    problems = [Problem(line, key, "duplicate key") for key, line in yamlpos.duplicate_keys(root)]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(path, [*problems, Problem(1, "", "the file must be a mapping of option: value")])
    options = {file_key(p): p for p in file_options(cmd)}
    secret_keys = set(secrets) & set(map(str, data))
    problems += _check_mode(path, bool(secret_keys))
    base = os.path.dirname(os.path.abspath(path))
    values: dict[str, Any] = {}
    for key, raw in data.items():
        line = yamlpos.line_of(root, str(key))
        p = options.get(str(key))
        if p is None:
            import difflib  # only for a mistyped key: a proxy does not hold it

            close = difflib.get_close_matches(str(key), options, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(sorted(options))}"
            problems.append(Problem(line, str(key), f"unknown key ({hint})"))
            continue
        try:
            value = msgspec.convert(raw, value_type(p), strict=True)
        except msgspec.ValidationError as e:
            problems.append(Problem(line, str(key), _friendly(str(e))))
            continue
        if isinstance(p.type, click.Path):  # relative to the file, not to wherever the daemon was started
            value = [os.path.join(base, v) for v in value] if p.multiple else os.path.join(base, value)
        try:
            value = p.process_value(ctx, tuple(value) if p.multiple else value)
        except click.BadParameter as e:
            problems.append(Problem(line, str(key), e.message))
            continue
        values[str(p.name)] = value
    if problems:
        raise ConfigFileError(path, problems)
    return values


class DaemonCommand(click.Command):
    """A click command whose every option may also come from GLASSMESH_<COMMAND>_<FLAG> and a config file.

    `secrets`: file keys whose value is a secret (the file must then be 0600).
    """

    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secrets = frozenset(secrets)
        name = self.name or ""
        self.params.insert(0, click.Option(
            ["--config-file", CONFIG_FILE_OPTION], type=click.Path(dir_okay=False), is_eager=True, show_default=False,
            expose_value=False, callback=self._load, metavar="FILE",
            help=f"YAML file of this command's options (keys: the flags without '--', '-' as '_'; relative paths "
                 f"are from the file's directory) [default: $GLASSMESH_CONFIG_DIR/{name}.yaml or "
                 f"{DEFAULT_CONFIG_DIR}/{name}.yaml, when it exists]. Precedence: flags > environment > file."))
        for p in self.params:
            if isinstance(p, click.Option) and p.name != "help" and any(o.startswith("--") for o in p.opts):
                p.envvar = env_name(name, p)
                p.show_envvar = True

    def default_file(self) -> str:
        return os.path.join(config_dir(), f"{self.name}.yaml")

    def _load(self, ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if ctx.resilient_parsing:  # shell completion
            return
        path = value
        if path is None and os.path.exists(self.default_file()):
            path = self.default_file()
        if path is None:
            return
        values = load_file(ctx, self, path, self.secrets)
        ctx.default_map = {**(ctx.default_map or {}), **values}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.BadParameter as e:
            # Name where the bad value came from (click names the flag and its variable whichever it was).
            p = e.param
            if isinstance(p, click.Option) and p.name:
                src = ctx.get_parameter_source(p.name)
                if src is click.core.ParameterSource.ENVIRONMENT:
                    e.param_hint = f"{p.envvar} (environment)"
                elif src is click.core.ParameterSource.COMMANDLINE:
                    e.param_hint = "'" + "' / '".join(p.opts) + "'"
            raise


def daemon_command(secrets: Iterable[str] = ()) -> Callable[[Callable[..., Any]], DaemonCommand]:
    """`@daemon_command()` in place of `@click.command()` for a daemon."""
    return click.command(cls=DaemonCommand, secrets=secrets)  # type: ignore[no-any-return]
