"""The `nluft` console script: every verb of nluft.cli plus the verbs that live in launch/.

nluft never imports launch/ (the layer rule), so the launcher adds its verbs to nluft's parser
here and hands every other verb back to nluft.cli.
"""

from __future__ import annotations

import sys
from typing import Any

from launch import submit, torchrun
from nluft import cli

LAUNCH_VERBS = {"launch": torchrun.run_launch, "submit": submit.run_submit}


def add_verbs(verbs: Any) -> None:
    torchrun.add_parser(verbs)
    submit.add_parser(verbs)


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args(cli.build_parser(extend=add_verbs), argv)
    verb = LAUNCH_VERBS.get(args.verb) or cli.VERBS[args.verb]
    return cli.run_verb(verb, args)


if __name__ == "__main__":
    sys.exit(main())
