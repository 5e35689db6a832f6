"""Shell completion for bash and zsh: commands, their flags, and (through Hydra's own completion) the
config groups, options and keys of `regx train`, `show-aug`, `lr-plot` and `check-data`.

    eval "$(regx -sc install=bash)"        # or: regx train -sc install=bash, as Hydra users type it
    eval "$(regx -sc install=zsh)"

The installed function asks `regx -sc query=bash` with the line typed so far in COMP_LINE.
"""

from __future__ import annotations

SCRIPT = """_regx_completion()
{
    local choices
    choices=$(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" regx -sc query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "${COMP_WORDS[COMP_CWORD]}"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _regx_completion regx
"""

CONFIG_COMMANDS = ("train", "show-aug", "lr-plot", "check-data")
FLAGS = {
    "train": ["-m", "--multirun", "--cfg", "--help", "--info", "--config-dir", "--config-path", "--config-name"],
    "resume": ["--force", "--help"],
    "eval": ["--last", "--out", "--split", "--unknown", "--help"],
    "plot": ["--help"],
    "report": ["--sort", "--group-by", "--metric", "--out", "--help"],
    "sweep-resume": ["--help"],
    "export": ["--format", "--out", "--checkpoint", "--help"],
    "show-aug": ["--out", "--help"],
    "predict": ["--out", "--top-k", "--batch-size", "--checkpoint", "--workers", "--device", "--help"],
    "lr-plot": ["--out", "--help"],
    "check-data": ["--help"],
}


def script(action: str) -> str:
    """What `-sc install=SHELL` / `-sc uninstall=SHELL` prints for the shell to eval."""
    verb, _, shell = action.partition("=")
    if verb not in ("install", "uninstall") or shell not in ("bash", "zsh"):
        raise ValueError(f"-sc {action}: use install=bash, install=zsh, uninstall=bash or uninstall=zsh")
    if verb == "uninstall":
        return "complete -r regx 2>/dev/null; unset -f _regx_completion\n"
    return ("autoload -Uz bashcompinit && bashcompinit\n" if shell == "zsh" else "") + SCRIPT


def complete(line: str, commands: list[str]) -> list[str]:
    """The words that may come next after `line` (COMP_LINE: what is typed, `regx` first)."""
    words = line.split()[1:]
    current = "" if line.endswith(" ") or not words else words[-1]
    done = words if line.endswith(" ") else words[:-1]
    if not done:
        return [c for c in commands if c.startswith(current)]
    command = done[0]
    if current.startswith("-"):
        return [f for f in FLAGS.get(command, []) if f.startswith(current)]
    if command not in CONFIG_COMMANDS:
        return []  # run and sweep directories: the shell completes paths
    rest, config_dir = _without_config_dir(done[1:])
    return _config_words(" ".join([*rest, current]), config_dir)


def _without_config_dir(words: list[str]) -> tuple[list[str], str | None]:
    """The words without `-cd DIR` (`--config-dir DIR`, `--config-dir=DIR`), and DIR: the user's own
    config folder, whose options complete too."""
    out, found, i = [], None, 0
    while i < len(words):
        w = words[i]
        if w in ("-cd", "--config-dir") and i + 1 < len(words):
            found, i = words[i + 1], i + 2
            continue
        if w.startswith("--config-dir="):
            found = w.partition("=")[2]
        else:
            out.append(w)
        i += 1
    return out, found


def _config_words(line: str, config_dir: str | None = None) -> list[str]:
    """Hydra's completion of groups, options and keys over regx's config tree (and `config_dir`'s, as
    `-cd` adds it)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.bash_completion import BashCompletion
    from hydra._internal.utils import create_config_search_path

    from regx import config

    config.register()
    search_path = create_config_search_path(str(config.conf_dir()))
    if config_dir:
        from pathlib import Path

        search_path.prepend("command-line", f"file://{Path(config_dir).expanduser().resolve()}")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    try:
        return BashCompletion(loader)._query(config_name="train", line=line)
    except Exception:  # a half-typed line Hydra cannot parse: nothing to offer
        return []
