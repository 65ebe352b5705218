"""mkdocs hook: serve the experiments' results and the benchmarks' figures inside the site.

Pages under docs/ link them as ``../experiments/results/...`` and ``../benchmarks/RESULTS.md``,
paths that are valid where the Markdown is read on its own (a clone, GitHub). The hook adds those
files to the site under ``experiments/`` and ``benchmarks/`` and drops the ``../`` from the pages'
links, so ``mkdocs build --strict`` checks every such link like any other.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
SERVED = ("experiments/results/**/*", "benchmarks/RESULTS.md")
_OUTSIDE = re.compile(r"(\]\(|\]: |src=\")\.\./(experiments|benchmarks)/")


def on_files(files: Files, config) -> Files:
    for pattern in SERVED:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file():
                rel = path.relative_to(ROOT).as_posix()
                files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "/" not in page.file.src_uri:  # a page of docs/ itself: its ../ reaches the repository root
        markdown = _OUTSIDE.sub(r"\1\2/", markdown)
    return markdown


# The docstrings are reST (``:class:`~pyrovae.VAE```); mkdocstrings renders the role's name as
# text before the code. Show the code alone, with ``~`` keeping only the last dotted part.
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):<code>(~?)([^<]*)</code>")


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)
