"""``u2cb shell``: the center's interactive prompt, each line a u2cb command."""

from __future__ import annotations

import cmd
import shlex
from collections.abc import Callable

PROMPT = "(U2CB Server) > "
VERBS = ("create", "defcreate", "delete", "list", "connect", "download", "status", "logs",
         "cancel")


class Prompt(cmd.Cmd):
    """``create -n NAME -b BASE``, ``list def``, ``connect -n NAME`` … ``exit`` leaves."""

    prompt = PROMPT
    intro = "U2CB build service: type help for the commands, exit to leave."

    def __init__(self, run: Callable[[list[str]], int]) -> None:
        super().__init__()
        self.run = run
        self.status = 0

    def default(self, line: str) -> None:
        try:
            argv = shlex.split(line)
        except ValueError as err:
            print(f"u2cb: error: {err}")
            return
        if argv and argv[0] in VERBS:
            self.status = self.run(argv)
        else:
            print(f"unknown command {argv[0]!r}: type help")

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: the commands, or one command's options."""
        if arg:
            self.run([arg, "--help"])
            return
        print("commands: " + " ".join((*VERBS, "help", "exit")))
        print("  create -n NAME -b docker://REF    defcreate -n NAME -d FILE.def")
        print("  list [def|img]    connect -n NAME    download -n NAME    delete -n NAME")

    def do_exit(self, _arg: str) -> bool:
        """exit: leave the prompt."""
        return True

    do_quit = do_exit

    def do_EOF(self, _arg: str) -> bool:
        print()
        return True

    def emptyline(self) -> None:
        pass
