"""docs/cli.md cannot drift from the parser: every subcommand has a section naming all its
arguments. docs/glossary.md defines the words the design asks for."""

import argparse
import re
from pathlib import Path

import pytest

from parallel_rl.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## parallel-rl (\S+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_cli_reference_documents_every_argument(name):
    section = sections((DOCS / "cli.md").read_text()).get(name)
    assert section is not None, f"docs/cli.md has no '## parallel-rl {name}' section"
    missing = []
    for action in subcommands()[name]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = action.option_strings or [action.metavar or action.dest.upper()]
        missing += [n for n in names if not re.search(rf"`{re.escape(n)}[` \[]", section)]
    assert not missing, f"docs/cli.md, section {name}: document {missing}"


def test_glossary_defines_the_shared_words():
    text = (DOCS / "glossary.md").read_text().lower()
    for word in ("actor", "actor process", "agent step", "frame", "rollout", "batch", "minibatch", "update",
                 "policy version", "policy lag", "slot", "utd"):
        assert f"**{word}" in text, word
