"""README.md and docs/*.md: every relative link resolves, and every ``python scripts/NAME.py``
command shown names an existing script and only flags its ``--help`` lists."""
import functools
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
COMMAND = re.compile(r'python (scripts/[\w-]+\.py)((?:(?!python )[^`#\n])*)')
FLAG = re.compile(r'(?<![\w-])(--[a-z0-9][a-z0-9-]*)')


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def relative_links(text):
    """Link targets that are paths (not URLs, not in-page anchors), without their #anchor."""
    for target in LINK.findall(text):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue
        yield target.split('#', 1)[0]


def commands(text):
    """``(script, words)`` of each ``python scripts/NAME.py ...`` shown; lines continued with
    a backslash are joined."""
    text = re.sub(r'\\\n\s*', ' ', text)
    for script, rest in COMMAND.findall(text):
        yield script, rest.split()


@functools.lru_cache(maxsize=None)
def help_flags(script, subcommand=None):
    """The flags ``python SCRIPT [SUBCOMMAND] --help`` lists (None: the script's help failed)."""
    argv = [sys.executable, os.path.join(ROOT, script)] + ([subcommand] if subcommand else [])
    done = subprocess.run(argv + ['--help'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return None
    return frozenset(FLAG.findall(done.stdout)), done.stdout


def subcommands(help_text):
    """The subcommand names a usage line lists as ``{a,b,c}`` or in a COMMAND section."""
    found = set()
    for group in re.findall(r'\{([\w,-]+)\}', help_text):
        found.update(group.split(','))
    for line in help_text.split('\n'):
        match = re.match(r'^    ([a-z][\w-]*)\s{2,}\S', line)
        if match:
            found.add(match.group(1))
    return found


def test_pages_exist():
    assert len(PAGES) >= 10
    assert len(read(PAGES[0]).split('\n')) <= 250, 'README.md is the front door: 250 lines at most'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    folder = os.path.dirname(page)
    broken = [t for t in relative_links(read(page))
              if not os.path.exists(os.path.normpath(os.path.join(folder, t)))]
    assert not broken, '%s: links to missing files: %s' % (os.path.relpath(page, ROOT), broken)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_commands_use_real_scripts_and_flags(page):
    problems = []
    for script, words in commands(read(page)):
        if not os.path.isfile(os.path.join(ROOT, script)):
            problems.append('%s: no such script' % script)
            continue
        top = help_flags(script)
        assert top is not None, '%s --help failed' % script
        flags, text = top
        names = subcommands(text)
        first = next((w for w in words if not w.startswith('-')), None)
        if first in names:
            sub = help_flags(script, first)
            assert sub is not None, '%s %s --help failed' % (script, first)
            flags = flags | sub[0]
        used = {f for w in words for f in FLAG.findall(w.split('=', 1)[0]) if w.startswith('--')}
        problems += ['%s: %s is not in its --help' % (script, f) for f in sorted(used - flags)]
    assert not problems, '%s:\n%s' % (os.path.relpath(page, ROOT), '\n'.join(problems))


def test_the_checker_sees_bad_links_and_flags(tmp_path):
    text = ('[a](docs/missing.md) [b](https://example.org) [c](#anchor) ![d](docs/x.png#top)\n'
            '    python scripts/train.py --epochs 2 \\\n        --no-such-flag\n'
            '`python scripts/nope.py --x`\n'
            '    python scripts/launch.py -n 2 -- python scripts/train.py --kvstore dist_sync\n')
    assert list(relative_links(text)) == ['docs/missing.md', 'docs/x.png']
    found = list(commands(text))
    assert found[0] == ('scripts/train.py', ['--epochs', '2', '--no-such-flag'])
    assert found[1] == ('scripts/nope.py', ['--x'])
    assert found[2:] == [('scripts/launch.py', ['-n', '2', '--']),
                         ('scripts/train.py', ['--kvstore', 'dist_sync'])]
    flags, _ = help_flags('scripts/train.py')
    assert '--epochs' in flags and '--no-such-flag' not in flags
