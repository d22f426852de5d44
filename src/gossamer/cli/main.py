"""The `gossamer` command."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from gossamer import __version__

# Command groups, one module each, registered in this order (the order of `--help`).
COMMAND_MODULES = (
    "controlplane",
    "resources",
    "token",
    "apitoken",
    "proxy",
    "host",
    "check",
    "stat",
    "tap",
    "top",
    "authz",
    "audit",
    "ca",
    "routes",
    "demo",
    "describe",
    "findings",
    "control",
    "analyze",
    "capture",
    "inject",
    "bootstrap",
)
# The proxy lives as long as its workload: it loads only its own command module, so
# it does not carry the rest of the CLI (the resource models alone are megabytes).
LEAN_COMMANDS = {"proxy": "proxy", "run": "proxy", "host": "host"}

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")


class Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command, choice or flag, and the
    usage of the command that was mistyped rather than of `gossamer` itself."""

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.search(message)
        if m:
            wrong = m.group(1)
            choices = re.findall(r"'([^']*)'", m.group(2))
            message = message[: m.start()] + f"invalid choice: {wrong!r}"
            message += _suggest(wrong, choices, f"choose from {', '.join(choices)}")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def unknown(self, extras: list[str]) -> NoReturn:
        """Arguments this command does not take, with the nearest flag it does take."""
        options = [s for s in self._option_string_actions if s.startswith("--")]
        parts = []
        for arg in extras:
            close = difflib.get_close_matches(arg.partition("=")[0], options, n=1, cutoff=0.6)
            parts.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        self.error(
            f"unrecognized arguments: {' '.join(parts)}; `{self.prog} --help` lists its flags"
        )


def _suggest(wrong: str, choices: Sequence[str], otherwise: str) -> str:
    close = difflib.get_close_matches(wrong, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" ({otherwise})" if otherwise else ""


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> Parser:
    parser = Parser(
        prog="gossamer",
        description="Gossamer: a service mesh. mTLS with workload identity, discovery, "
        "and a fast proxy, on plain hosts and Kubernetes.",
        epilog="Exit codes: 0 done, 1 something is wrong, 2 a usage error, 130 interrupted. "
        "Reference: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"gossamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"gossamer.cli.{name}").register(sub)
    v = sub.add_parser(
        "version",
        help="print the CLI's version and the control plane's",
        description="Print this CLI's version and, when it answers, the control plane's "
        "(--client: only the CLI's).",
    )
    v.add_argument("--client", action="store_true", help="only the CLI's version")
    v.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    v.add_argument("--server", help="API address (default: $GOSSAMER_SERVER)")
    v.add_argument("--token-file", help="API token file (default: $GOSSAMER_TOKEN)")
    v.set_defaults(func=version)
    c = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for commands, subcommands, flags, kinds and "
        "flag choices. bash: `source <(gossamer completion bash)` (or write it to "
        "/etc/bash_completion.d/gossamer); zsh: `source <(gossamer completion zsh)`.",
    )
    c.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    c.set_defaults(func=lambda args: print(completion_script(parser, args.shell)) or 0)
    return parser


def _words(p: argparse.ArgumentParser) -> list[str]:
    """What may follow a (sub)command: its subcommands, flags and positional choices."""
    words: list[str] = []
    for action in p._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            words += list(action.choices)
        elif action.option_strings:
            words += [s for s in action.option_strings if s.startswith("--")]
        elif action.choices:
            words += [str(c) for c in action.choices]
    if p.prog.split()[-1] in ("get", "delete"):
        from gossamer.resources import KINDS

        words += [info.plural for info in KINDS.values()]
    return words


def _choices(p: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Flags that take one of a few values, with the values: `-o` → table, json..."""
    out = {}
    for action in p._actions:
        if action.option_strings and action.choices:
            for flag in action.option_strings:
                out[flag] = [str(c) for c in action.choices]
    return out


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A bash function (zsh runs it through bashcompinit) with every command's words."""
    cases = []
    todo: list[tuple[str, argparse.ArgumentParser]] = [("", parser)]
    while todo:
        path, p = todo.pop(0)
        words = " ".join(_words(p))
        flags = "".join(
            f'\n      {flag}) COMPREPLY=($(compgen -W "{" ".join(vals)}" -- "$cur")); return;;'
            for flag, vals in _choices(p).items()
        )
        cases.append(
            f'    "{path}")\n      case "$prev" in{flags}\n      esac\n      words="{words}";;'
        )
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    todo.append(((f"{path} {name}").strip(), child))
    body = "\n".join(cases)
    script = f"""# gossamer completion ({shell}); generated by `gossamer completion {shell}`
_gossamer() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  local path="" words="" i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    case "$w" in -*) continue;; esac
    if _gossamer_known "${{path:+$path }}$w"; then path="${{path:+$path }}$w"; fi
  done
  case "$path" in
{body}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
_gossamer_known() {{
  case "$1" in
    {"|".join(f'"{p}"' for p, _ in _paths(parser) if p)}) return 0;;
  esac
  return 1
}}
"""
    if shell == "zsh":
        script += "autoload -U +X bashcompinit && bashcompinit\n"
    return script + "complete -o default -F _gossamer gossamer"


def _paths(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _paths(child, f"{prefix} {name}".strip())
    return out


def version(args: argparse.Namespace) -> int:
    from gossamer.cli.client import ApiError, Client

    report: dict[str, Any] = {"client": __version__}
    if not args.client:
        try:
            server = Client.from_settings(args.server, args.token_file)
            answer = server.get("/version")
            report["server"] = {"version": answer["version"], "address": server.server}
        except (ApiError, KeyError, TypeError) as err:
            report["server"] = {"error": str(err)}
    if args.output in ("json", "yaml"):
        from gossamer.cli.output import dump

        dump(report, args.output)
        return 0
    print(f"gossamer {__version__}")
    if "server" in report:
        s = report["server"]
        if "version" in s:
            print(f"control plane {s['version']} at {s['address']}")
        else:
            print(f"control plane: {s['error']}", file=sys.stderr)
    return 0


def _parser_of(parser: argparse.ArgumentParser, raw: Sequence[str]) -> argparse.ArgumentParser:
    """The (sub)command parser that `raw` selects: where an unknown flag belongs."""
    words = [w for w in raw if not w.startswith("-")]
    current = parser
    for word in words:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = actions[0].choices.get(word) if actions else None
        if chosen is None:
            break
        current = chosen
    return current


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    lean = LEAN_COMMANDS.get(raw[0]) if raw else None
    parser = build_parser((lean,) if lean else COMMAND_MODULES)
    args, extras = parser.parse_known_args(raw)
    if extras:
        target = _parser_of(parser, raw)
        (target if isinstance(target, Parser) else parser).unknown(extras)
    args.raw_argv = raw
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`gossamer routes ... | head -3`): stop quietly, and keep
        # Python's own flush at exit from failing on the closed pipe too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as err:
        if os.environ.get("GOSSAMER_DEBUG"):
            raise
        print(
            f"error: {type(err).__name__}: {err}\n"
            "this is a bug in gossamer: please report it with the traceback that "
            "GOSSAMER_DEBUG=1 prints",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
