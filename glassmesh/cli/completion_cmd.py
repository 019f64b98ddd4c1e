"""`glassmesh completion bash|zsh|fish`: the shell completion script, from click's own completion support.

Printed rather than installed, as kubectl does, so the operator chooses where
it goes (`glassmesh completion bash > /etc/bash_completion.d/glassmesh`, or
`source <(glassmesh completion bash)` in ~/.bashrc).
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

_HOW = {
    "bash": "source <(glassmesh completion bash)   # in ~/.bashrc",
    "zsh": "source <(glassmesh completion zsh)    # in ~/.zshrc, after compinit",
    "fish": "glassmesh completion fish > ~/.config/fish/completions/glassmesh.fish",
}


@click.command()
@click.argument("shell", type=click.Choice(sorted(_HOW)))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: source <(glassmesh completion bash)      (in ~/.bashrc)
    zsh:  source <(glassmesh completion zsh)       (in ~/.zshrc, after compinit)
    fish: glassmesh completion fish > ~/.config/fish/completions/glassmesh.fish
    """
    from glassmesh.cli.main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above lists only shells click supports
    click.echo(cls(cli, {}, "glassmesh", "_GLASSMESH_COMPLETE").source())
