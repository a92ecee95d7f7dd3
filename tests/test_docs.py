"""The documentation stays true: its code runs, and it names every setting and module.

* Every fenced ```bash and ```python block of the runnable pages (``RUNNABLE_PAGES``) is run
  in order in an empty temporary folder: bash blocks with ``bash -e -o pipefail`` and this
  interpreter's folder (the venv's ``bin``) first on ``PATH``; python blocks are executed in
  one namespace per page, in this process (so pytest's ``filterwarnings = error`` turns any
  warning into a failure).  Blocks fenced as ``sh``, ``console`` or ``text`` are not run.
* ``docs/algorithm.md`` names every config field and holds the table that
  ``docs/config_table.py`` generates from the code, unchanged.
* Fields the docs call unused are not read by the code, every module of ``src/diffim`` is in
  ``docs/architecture.md``, every ``diffim subtract`` option is documented, and relative
  links between the pages resolve.
"""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffim import config as config_module
from diffim.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE = ROOT / "src" / "diffim"
RUNNABLE_PAGES = ("quickstart.md", "tutorial.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
BASH_TIMEOUT_S = 300


def code_blocks(page):
    """Return ``(language, code, first line number)`` of every fenced block of a page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [
        (match.group(1), match.group(2), text.count("\n", 0, match.start(2)) + 1)
        for match in FENCE.finditer(text)
    ]


def load_config_table():
    """Import docs/config_table.py (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("config_table", DOCS / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bash(code, page, line, env):
    process = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=BASH_TIMEOUT_S,
        check=False,
    )
    assert process.returncode == 0, (
        f"{page}, bash block at line {line} exited with {process.returncode}:\n{code}\n"
        f"--- stdout ---\n{process.stdout[-4000:]}\n--- stderr ---\n{process.stderr[-4000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_page_code_runs(page, tmp_path, monkeypatch):
    """Each runnable page's bash and python blocks succeed, in order, in a fresh folder."""
    blocks = [
        (lang, code, line) for lang, code, line in code_blocks(page) if lang in ("bash", "python")
    ]
    assert blocks, f"{page} has no runnable block"
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MPLBACKEND"] = "Agg"
    namespace = {"__name__": f"docs.{page}"}
    for language, code, line in blocks:
        if language == "bash":
            run_bash(code, page, line, env)
        else:
            # leading newlines make tracebacks point at the page's own line numbers
            exec(compile("\n" * (line - 1) + code, str(DOCS / page), "exec"), namespace)


def config_classes():
    return (
        config_module.ImagePsfMatchConfig,
        config_module.KernelChoice,
        config_module.PsfMatchConfigAL,
        config_module.PsfMatchConfigDF,
        config_module.DetectionConfig,
        config_module.WarpingConfig,
        config_module.BackgroundConfig,
    )


def test_algorithm_names_every_config_field():
    text = (DOCS / "algorithm.md").read_text(encoding="utf-8")
    missing = [
        f"{cls.__name__}.{field.name}"
        for cls in config_classes()
        for field in dataclasses.fields(cls)
        if f"`{field.name}`" not in text
    ]
    assert not missing, f"docs/algorithm.md does not describe: {missing}"


def test_config_table_is_current():
    table = load_config_table()
    text = (DOCS / "algorithm.md").read_text(encoding="utf-8")
    current = table.extract(text)
    assert current is not None, "docs/algorithm.md lacks the config-table markers"
    assert current == table.render(), (
        "the config table in docs/algorithm.md is out of date; run "
        "`.venv/bin/python docs/config_table.py --update` and review the diff"
    )


def test_fields_called_unused_are_unused():
    """A field the docs call unused must not be read anywhere in the package."""
    table = load_config_table()
    sources = {
        str(path.relative_to(SOURCE)): path.read_text(encoding="utf-8")
        for path in SOURCE.rglob("*.py")
        if path.relative_to(SOURCE).parts[0] not in ("config.py", "config")
    }
    read = {
        name: sorted(module for module, text in sources.items() if re.search(rf"\.{name}\b", text))
        for name in table.UNUSED
    }
    now_used = {name: modules for name, modules in read.items() if modules}
    assert not now_used, (
        f"fields documented as unused are read by the code: {now_used}; update UNUSED and "
        "NOTES in docs/config_table.py, then run it with --update"
    )


def test_architecture_lists_every_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    packages = [f"{path.parent.name}/" for path in SOURCE.glob("*/__init__.py")]
    modules = sorted(
        [p.name for p in SOURCE.rglob("*.py") if not p.name.startswith("_")] + packages
    )
    missing = [name for name in modules if f"`{name}`" not in text]
    assert not missing, f"docs/architecture.md does not describe modules {missing}"


def test_subtract_options_are_documented():
    text = "".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    commands = next(action for action in _parser()._actions if action.dest == "command").choices
    options = [
        option
        for action in commands["subtract"]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [option for option in options if option not in text]
    assert not missing, f"diffim subtract options missing from docs/: {missing}"


def heading_anchors(text):
    """Return the GitHub-style anchors of a page's headings (outside code blocks)."""
    text = FENCE.sub("", text)
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE):
        slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
        anchors.add(slug.replace(" ", "-"))
    return anchors


def test_relative_links_resolve():
    """Links between the pages point at existing files and headings."""
    broken = []
    for page in DOCS.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", text):
            path = page.parent / target if target else page
            if not path.exists():
                broken.append(f"{page.name} -> {target}")
            elif anchor and anchor not in heading_anchors(path.read_text(encoding="utf-8")):
                broken.append(f"{page.name} -> {target or page.name}#{anchor}")
    assert not broken, f"broken links: {broken}"


def test_index_links_every_page():
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md")
    missing = [name for name in pages if f"({name}" not in text]
    assert not missing, f"docs/index.md does not link {missing}"
