"""The README and docs/ say only what committed files show, in the files' own rounding.

The convention every page follows (README.md and docs/*.md):

* **A quoted number names its file.** A paragraph, a list item or a table row that quotes a
  figure links the file it comes from: a result under `benchmarks/results/` (or the code or
  test that holds a setting, e.g. `datasets/limits.py`). A table row may leave the link to its
  caption, the paragraph right above the table. Every number in such a block must occur in one
  of the files it links, with the same value: 4.38 matches 4.380, 2,270 matches 2.27e+03, and
  94.9 % matches 0.949; 0.001 does not match 0.00123, nor 95.6 % 0.946. Signs are ignored
  ("lowered by 0.55" quotes −0.55). A stale number fails here once its file is regenerated.
* **No figure without a file.** A block that links no such file may not hold anything that
  looks measured: a decimal, a number of 1,000 or more, or a number with a unit (%, ×, s, MB,
  pp, …). Not counted as numbers: code (`…` and fenced blocks), file names, headings, and the
  names in NOT_QUOTED (a Python version, a paper's year, "page 3", "Algorithm 2", …).
* **Commands run.** Every `python benchmarks/….py …` and `python -m influence …` shown (in code
  spans or blocks) names a script that exists and arguments its parser accepts.
* **Links resolve**, anchors included; fenced code starts after a blank line; the README is at
  most 150 lines; every term the app links (app.words.term) has its glossary entry.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*```")
ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<url>[^)\s]+)\)")
FILE_NAME = re.compile(r"[\w./<>*-]*\w\.(?:md|py|csv|png|txt|sh|json|toml|safetensors|npy)\b")
NUMBER = re.compile(r"(?<![\w.])(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
                    r"(?:[eE][-−+]?\d+)?(?![\w])")
UNIT = re.compile(r"\s*(?:%|×|s\b|ms\b|min\b|h\b|MB\b|GB\b|MiB\b|KiB\b|pp\b|px\b|trainings?\b)")
# Names that contain digits but quote no measurement: a Python version, a paper's year, and
# references such as "page 3", "Algorithm 2", "section 5".
NOT_QUOTED = [r"Python 3\.11", r"NeurIPS 2019", r"\b[A-Z][a-z]+(?: et al\.)? (?:19|20)\d\d\b",
              r"\b(?:[Pp]ages?|[Ss]ections?|Algorithms?|Definition|Problem|Table|Figure) \d+"
              r"(?:(?:–| and | or )\d+)?\b"]
SOURCE_SUFFIXES = {".md", ".py", ".csv"}  # .md only under benchmarks/results/
COMMAND = re.compile(r"python (?:benchmarks/\S+\.py|-m influence)\b[^`\n#]*")


@dataclass
class Block:
    kind: str  # para, item, row, heading, code
    text: str
    line: int
    caption: "Block | None" = None
    links: list[str] = field(default_factory=list)


def blocks(text: str) -> list[Block]:
    """Markdown cut into paragraphs, list items, table rows (each with the paragraph above its
    table as caption), headings and fenced code."""
    lines, out, i = text.splitlines(), [], 0
    last: Block | None = None
    last_end = -10

    def add(kind, chunk, start, caption=None):
        nonlocal last, last_end
        block = Block(kind, "\n".join(chunk), start + 1, caption)
        block.links = [m["url"] for m in LINK.finditer(block.text)]
        out.append(block)
        if kind in ("para", "item"):
            last, last_end = block, i
        return block

    def starts_block(line):
        s = line.strip()
        return not s or FENCE.match(line) or s.startswith(("#", "|")) or ITEM.match(line)

    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            j = i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            add("code", lines[i + 1:j], i)
            i = j + 1
        elif not line.strip():
            i += 1
        elif line.lstrip().startswith("#"):
            add("heading", [line], i)
            i += 1
        elif line.lstrip().startswith("|"):
            caption = last if i - last_end <= 2 else None
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                if not re.fullmatch(r"[\s|:-]+", lines[i]):
                    add("row", [lines[i]], i, caption)
                i += 1
        else:
            kind, start = ("item" if ITEM.match(line) else "para"), i
            i += 1
            while i < len(lines) and not starts_block(lines[i]):
                i += 1
            add(kind, lines[start:i], start)
    return out


def local_target(page: Path, url: str) -> tuple[Path, str] | None:
    """The file and anchor a link points to in this repository, or None for a web address."""
    if re.match(r"[a-z]+:", url):
        return None
    path, _, anchor = url.partition("#")
    return ((page.parent / path).resolve() if path else page), anchor


def sources(page: Path, block: Block) -> list[Path]:
    """The files whose numbers a block may quote: those it (or its table's caption) links."""
    links = block.links or (block.caption.links if block.caption else [])
    found = []
    for url in links:
        target = local_target(page, url)
        if target is None:
            continue
        path = target[0]
        results = ROOT / "benchmarks" / "results"
        if path.suffix in SOURCE_SUFFIXES and (path.suffix != ".md" or path.parent == results):
            found.append(path)
    return found


def scrub(text: str) -> str:
    """The prose of a block: no code spans, link targets, file names, HTML or NOT_QUOTED."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = LINK.sub(lambda m: " " if FILE_NAME.search(m["text"]) else m["text"], text)
    text = re.sub(r"<[^>]*>", " ", text)
    text = FILE_NAME.sub(" ", text)
    for phrase in NOT_QUOTED:
        text = re.sub(phrase, " ", text)
    return text


def value(token: str) -> float:
    return abs(float(token.replace(",", "").replace("−", "-")))


def numbers_in(path: Path) -> set[float]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?<=\d)_(?=\d)", "", text)  # 40_000_000 in code
    return {value(m[0]) for m in NUMBER.finditer(text)}


def quoted(text: str):
    """(token, is a percentage, looks measured) for every number of a block's prose."""
    prose = scrub(text)
    for m in NUMBER.finditer(prose):
        token, unit = m[0], UNIT.match(prose[m.end():])
        percent = bool(unit) and unit[0].strip() == "%"
        measured = "." in token or "e" in token.lower() or value(token) >= 1000 or bool(unit)
        yield token, percent, measured


def same(token: str, percent: bool, known: set[float]) -> bool:
    x = value(token)
    return x in known or (percent and any(abs(x / 100 - k) < 1e-12 for k in known))


def test_every_quoted_number_is_in_the_file_it_names():
    cache, stale, unsourced = {}, [], []
    for page in PAGES:
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.kind in ("heading", "code"):
                continue
            files = sources(page, block)
            where = f"{page.relative_to(ROOT)}:{block.line}"
            if not files:
                unsourced += [f"{where}: {token} (no result file linked)"
                              for token, _, measured in quoted(block.text) if measured]
                continue
            known = set().union(*(cache.setdefault(f, numbers_in(f)) for f in files if
                                  f.exists()))
            names = ", ".join(f.name for f in files)
            stale += [f"{where}: {token} is not in {names}"
                      for token, percent, _ in quoted(block.text)
                      if not same(token, percent, known)]
    assert not stale and not unsourced, "\n".join(stale + unsourced)


def test_every_upload_limit_is_documented():
    """Each limit of datasets/limits.py appears in docs/limits.md (sizes in MiB); the number
    check above covers the other way."""
    from datasets import limits
    documented = numbers_in(ROOT / "docs" / "limits.md")
    values = {name: value / limits.MiB if name.endswith("_BYTES") else value
              for name, value in vars(limits).items() if name.isupper() and name != "MiB"}
    assert values and not {n: v for n, v in values.items() if v not in documented}


def anchors(page: Path) -> set[str]:
    """The anchors a Markdown page offers: explicit <a id> / <a name>, and GitHub's heading
    slugs."""
    text = page.read_text(encoding="utf-8")
    found = set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", text))
    for heading in re.findall(r"^#+\s+(.*)$", text, flags=re.M):
        plain = re.sub(r"<[^>]*>", "", heading).strip().lower()
        found.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", plain)))
    return found


def test_every_link_resolves():
    broken = []
    for page in PAGES:
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.kind == "code":
                continue
            for url in block.links:
                target = local_target(page, url)
                if target is None:
                    continue
                path, anchor = target
                where = f"{page.relative_to(ROOT)}:{block.line}: {url}"
                if not path.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                    broken.append(f"{where} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_fenced_code_starts_after_a_blank_line():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        inside = False
        for n, line in enumerate(lines):
            if FENCE.match(line):
                if not inside:
                    assert n == 0 or not lines[n - 1].strip() or ITEM.match(lines[n - 1]), \
                        f"{page.relative_to(ROOT)}:{n + 1}: no blank line before the code block"
                inside = not inside
        assert not inside, f"{page.relative_to(ROOT)}: a code block is not closed"


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def commands() -> list[str]:
    """Every command shown in README.md and docs/ that runs a benchmark or the CLI: each line of
    a fenced code block, and each code span with an option (`python -m influence score` alone
    names a command, it does not show one)."""
    found = []
    for page in PAGES:
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.kind == "code":
                lines = block.text.splitlines()
            else:
                lines = [" ".join(span.split()) for span in re.findall(r"`([^`]*)`", block.text)
                         if " --" in span]
            for line in lines:
                found += [m[0].strip() for m in COMMAND.finditer(line)]
    return sorted(set(found))


# Runs each command's own argument parser in one process, stopping right after it parsed:
# a missing script, an unknown option or a wrong choice is an error; nothing else runs.
PARSE_ONLY = r"""
import argparse, json, runpy, shlex, sys
from pathlib import Path
sys.path.insert(0, str(Path(".").resolve()))
class Parsed(Exception):
    pass
parse_args = argparse.ArgumentParser.parse_args
def stop(self, args=None, namespace=None):
    parse_args(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = stop
errors = {}
for command in json.loads(sys.argv[1]):
    argv = shlex.split(command)[1:]
    try:
        if argv[:2] == ["-m", "influence"]:
            from influence import cli
            sys.argv = ["python -m influence", *argv[2:]]
            cli.parser().parse_args(argv[2:])
        else:
            sys.argv, sys.path[0] = argv, str(Path(argv[0]).parent.resolve())
            runpy.run_path(argv[0], run_name="__main__")
        errors[command] = "ran without parsing its arguments"
    except Parsed:
        pass
    except SystemExit as e:
        errors[command] = f"its parser refused it (exit {e.code})"
    except Exception as e:
        errors[command] = f"{type(e).__name__}: {e}"
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_every_command_shown_parses():
    shown = commands()
    assert any(c.startswith("python benchmarks/") for c in shown) and \
        any(c.startswith("python -m influence") for c in shown)  # the search finds them
    missing = [c for c in shown if c.startswith("python benchmarks/")
               and not (ROOT / shlex.split(c)[1]).exists()]
    assert not missing, missing
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY, json.dumps(shown)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert not errors, "\n".join(f"{c}: {e}" for c, e in errors.items())


def test_every_term_the_app_links_has_its_glossary_entry():
    from app import words
    used = set()
    for path in sorted((ROOT / "app").rglob("*.py")):
        used |= set(re.findall(r"\bterm\(\s*\"([^\"]+)\"", path.read_text(encoding="utf-8")))
    assert used, "the app links no glossary term"
    entries = words.glossary()
    assert not used - set(entries), sorted(used - set(entries))
    for anchor in used:
        assert words.term(anchor).endswith(f"](glossary?term={anchor})")
    assert set(entries) <= anchors(ROOT / "docs" / "glossary.md")
    with pytest.raises(KeyError):
        words.term("no-such-term")


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The number check is not vacuous: a stale figure, a rounded one and an unsourced one are
    all caught, and a faithful one passes."""
    known = numbers_in(ROOT / "benchmarks" / "results" / "noisy.md")
    assert same("0.949", False, known) and same("94.9", True, known)
    assert same("0.8176", False, known) and not same("0.82", False, known)  # rounded
    assert not same("0.946", False, known) and not same("95.6", True, known)  # other files'
    page = tmp_path / "page.md"
    page.write_text("Recall 0.949 ([noisy.md](x.md)).\n\nIt takes 1.5 s.\n\n"
                    "| a | b |\n|---|---|\n| 0.3 | 2 |\n")
    found = blocks(page.read_text())
    assert [b.kind for b in found] == ["para", "para", "row", "row"]
    assert found[2].caption is found[3].caption is found[1]  # the paragraph above the table
    assert [t for t, _, m in quoted(found[1].text) if m] == ["1.5"]
    assert [t for t, _, m in quoted("`--splits 5` in NeurIPS 2019, file lie-2.md") if m] == []


def test_the_glossary_page_shows_every_entry_and_page_one_links_to_it():
    from helpers import new_app, text
    from app import words
    at = new_app()
    assert "glossary?term=selection-part" in text(at)  # page 1's caption links its terms
    at.query_params["term"] = "holm"  # as the link opens it
    at.switch_page("views/glossary.py").run()
    assert not at.exception, at.exception
    assert at.info[0].value.startswith("**Holm's correction.** A correction for testing many")
    shown = [h.value for h in at.subheader]
    assert shown == [e.title for e in words.glossary().values()] and len(shown) >= 20
    assert all("](../" not in m.value for m in at.markdown)  # file links kept as text only
