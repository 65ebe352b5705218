"""The documentation is kept true: the site builds in strict mode with every public name in its
reference, the README's links resolve, and every ``python`` and ``bash`` block of README.md and
docs/*.md runs, in order, page by page.

How blocks run, and the budget they run with, is the convention docs/contributing.md documents;
:func:`budget_shell` and :func:`budget_python` are that convention.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import pyrovae

ROOT = Path(__file__).resolve().parents[1]
SERVER = Path(__file__).with_name("docs_server.py")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# Budget: counts of epochs and trials divided by 10 (rounded up, so a resume still trains more);
# importance samples K = 10; data: a 2,000-image MNIST sample saved as a data file.
EVAL = {"eval_k": 10, "eval_n_test": 50}
SAMPLE_SIZE = 2000
NOT_RUN = ("pip install", "python -m pytest", "tensorboard ")  # CI's own steps, and a server


def _fewer(n: str) -> int:
    return math.ceil(int(n) / 10)


def blocks(page: Path) -> list[tuple[str, str]]:
    """The page's fenced ``python`` and ``bash`` blocks, in order."""
    return [(lang, code) for lang, code in FENCE.findall(page.read_text()) if lang in ("python", "bash")]


RUNNABLE = [page for page in PAGES if blocks(page)]


def budget_shell(script: str, sample: Path) -> str:
    """``script`` with small budgets: every ``pyrovae train`` and ``pyrovae sweep`` command gets the
    data sample (unless it names its own ``--dataset``) and small evaluation flags appended,
    ``--epochs N`` and ``--trials N`` become N/10 rounded up, ``--k N`` becomes ``--k 10``, and
    the commands of ``NOT_RUN`` become no-ops."""
    script = script.replace("\\\n", " ")
    out = []
    for line in script.splitlines():
        if "pyrovae" in line:
            line = re.sub(r"\s+#.*$", "", line)
            line = re.sub(r"(--(?:epochs|trials)[ =])(\d+)", lambda m: f"{m[1]}{_fewer(m[2])}", line)
            line = re.sub(r"--k[ =]\d+", "--k 10", line)
        parts = re.split(r"(&&|\|\||;|\|(?!\|)|(?<![>&])&(?![>&]))", line)
        for i, part in enumerate(parts):
            if part.strip().startswith(NOT_RUN):
                parts[i] = " : "
            elif re.search(r"pyrovae (train|sweep)\b", part):
                extra = f" --eval-k {EVAL['eval_k']} --eval-n-test {EVAL['eval_n_test']}"
                if "--dataset" not in part:
                    extra += f" --dataset file --data-file {sample}"
                parts[i] = part.rstrip() + extra + " "
        out.append("".join(parts))
    return "\n".join(out)


def budget_python(code: str, sample: Path) -> str:
    """``code`` with small budgets: every ``epochs=N`` keyword (of a :class:`pyrovae.Config`)
    becomes N/10 rounded up, with the data sample and small evaluation keywords added."""
    extra = f'dataset="file", data_file="{sample}", ' + ", ".join(f"{k}={v}" for k, v in EVAL.items())
    return re.sub(r"\bepochs=(\d+)", lambda m: f"epochs={_fewer(m[1])}, {extra}", code)


SHELL_PRELUDE = """set -euo pipefail
pyrovae() { "$DOCS_PYTHON" -S "$DOCS_CLIENT" --client "$DOCS_SERVER" "$@"; }
python() { "$DOCS_PYTHON" "$@"; }
torchrun() {  # its workers' `-m pyrovae` through the command server too
  local args=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -m ] && [ "${2:-}" = pyrovae ]; then args+=(--no-python "$DOCS_PYROVAE"); shift 2
    else args+=("$1"); shift; fi
  done
  "$DOCS_PYTHON" -m torch.distributed.run "${args[@]}"
}
export -f pyrovae python torchrun
"""


@pytest.fixture(scope="module")
def pyrovae_server(tmp_path_factory):
    """tests/docs_server.py: runs each ``pyrovae`` command of the docs in a fork of a process that
    has imported pyrovae once (imports cost more than a budgeted command's work)."""
    folder = tmp_path_factory.mktemp("docs-server")
    path = folder / "socket"
    command = folder / "pyrovae"  # an executable `pyrovae`, for torchrun --no-python
    command.write_text('#!/bin/sh\nexec "$DOCS_PYTHON" -S "$DOCS_CLIENT" --client "$DOCS_SERVER" "$@"\n')
    command.chmod(0o755)
    env = dict(os.environ, PYTHONPATH=_pythonpath(), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(path)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready", "the docs' command server did not start"
        yield path
    finally:
        server.kill()
        server.wait()


def _pythonpath() -> str:
    return os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )  # the checkout under test


@pytest.fixture(scope="module")
def mnist_sample(tmp_path_factory) -> Path:
    """The first 2,000 MNIST training images with their labels, grey values in [0, 1]."""
    data = os.environ.get("PYROVAE_DATA")
    if not data or not (Path(data) / "MNIST" / "raw").exists():
        pytest.skip("set PYROVAE_DATA to a folder holding MNIST/raw/ to run the documentation's examples")
    import torch
    import torchvision

    ds = torchvision.datasets.MNIST(data, train=True, download=False)
    path = tmp_path_factory.mktemp("docs-data") / "mnist_sample.pt"
    x = ds.data[:SAMPLE_SIZE].unsqueeze(1).float().div(255)  # (N, 1, 28, 28)
    torch.save({"x": x, "y": ds.targets[:SAMPLE_SIZE].clone()}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.relative_to(ROOT).as_posix() for p in RUNNABLE])
def test_examples_run(page, mnist_sample, pyrovae_server, tmp_path, monkeypatch):
    """Every python and bash block of the page, in order, in one folder; python blocks share one
    namespace. A failing block fails the test, naming the page and block."""
    from pyrovae.guides import GUIDES
    from pyrovae.likelihoods import LIKELIHOODS
    from pyrovae.nets import NETS
    from pyrovae.priors import PRIORS

    found = blocks(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = dict(os.environ, DOCS_PYTHON=sys.executable, DOCS_CLIENT=str(SERVER), DOCS_SERVER=str(pyrovae_server),
               DOCS_PYROVAE=str(pyrovae_server.with_name("pyrovae")),
               PYTHONPATH=_pythonpath(), OMP_NUM_THREADS="1")  # fmt: skip
    registries = [(r, dict(r)) for r in (PRIORS, GUIDES, LIKELIHOODS, NETS)]
    namespace: dict = {"__name__": "__docs__"}
    try:
        for i, (lang, code) in enumerate(found, 1):
            where = f"{page.name}, block {i} ({lang})"
            if lang == "python":
                exec(compile(budget_python(code, mnist_sample), where, "exec"), namespace)
            else:
                script = SHELL_PRELUDE + budget_shell(code, mnist_sample)
                res = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                                     timeout=300)  # fmt: skip
                assert res.returncode == 0, (
                    f"{where} failed:\n{script}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
                )
    finally:
        for registry, saved in registries:  # a page that registers a component leaves no trace
            registry.clear()
            registry.update(saved)


def test_budget_rewrites_commands(tmp_path):
    """The convention does what docs/contributing.md says, including for a resume and a pipe."""
    s = tmp_path / "s.pt"
    cmd = budget_shell(
        "pip install -e . && pyrovae train --epochs 10 --out a   # a comment\n"
        "pyrovae train --out a --resume --epochs 20 2>&1 | tail -1\n"
        "pyrovae evaluate a --k 5000\n"
        "for i in 1 2; do pyrovae sweep --trials 40 --dataset mnist & done",
        s,
    ).splitlines()
    assert (
        cmd[0]
        == f" : && pyrovae train --epochs 1 --out a --eval-k 10 --eval-n-test 50 --dataset file --data-file {s} "
    )
    assert (
        cmd[1]
        == f"pyrovae train --out a --resume --epochs 2 2>&1 --eval-k 10 --eval-n-test 50 --dataset file --data-file {s} | tail -1"
    )
    assert cmd[2] == "pyrovae evaluate a --k 10"
    assert "--trials 4 --dataset mnist --eval-k 10 --eval-n-test 50 & done" in cmd[3]
    code = budget_python('Config.from_preset("tutorial", epochs=10)', s)
    assert (
        code
        == f'Config.from_preset("tutorial", epochs=1, dataset="file", data_file="{s}", eval_k=10, eval_n_test=50)'
    )


def _github_slug(heading: str) -> str:
    slug = heading.strip().lower()
    slug = "".join(c for c in slug if c.isalnum() or c in " -_" or unicodedata.category(c).startswith("L"))
    return slug.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_github_slug(h) for h in re.findall(r"^#+\s+(.*)$", text, re.M)}


def test_readme_links_resolve():
    """Every relative link and image of README.md names a file of the repository, and an anchor
    into a Markdown file names one of its headings (GitHub's slugs)."""
    links = re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", (ROOT / "README.md").read_text()))
    assert links
    for link in links:
        if re.match(r"\w+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target
        assert path.exists(), f"README.md links {link}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README.md links {link}: no heading makes #{anchor}"


def test_readme_fits_a_screen_and_keeps_its_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 6000, f"README.md has {len(text)} characters"
    lang, first = blocks(ROOT / "README.md")[0]
    install, tests = first.strip().splitlines()
    assert install.startswith('pip install -e ".[dev]" && pyrovae train --preset tutorial')
    assert tests == "python -m pytest -q"
    assert tests in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


def _reference_id(name: str) -> str:
    """The anchor the reference must have for ``pyrovae.NAME``: that path, or where a submodule has
    the same name (``pyrovae.evaluate``, the function, and ``pyrovae/evaluate.py``), the object's
    own module path, so that a page about the module does not count for the function."""
    obj = getattr(pyrovae, name)
    if importlib.util.find_spec(f"pyrovae.{name}") is None:
        return f"pyrovae.{name}"
    return f"{obj.__module__}.{obj.__qualname__}"


def test_site_builds_strict_with_every_public_name(tmp_path):
    """``mkdocs build --strict``: no warning, no broken link or anchor, and the reference holds an
    entry for every name in ``pyrovae.__all__``."""
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(site)],
        capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    reference = (site / "reference" / "index.html").read_text()
    missing = [name for name in pyrovae.__all__ if f'id="{_reference_id(name)}"' not in reference]
    assert not missing, f"docs/reference.md lacks {missing}: add a `::: pyrovae.NAME` entry for each"
    # what the guides point to beyond __all__: the component options and the variant protocol
    for name in ("pyrovae.build.vae_parts", "pyrovae.variants.Variant", "pyrovae.variants.Training"):
        assert f'id="{name}"' in reference, f"docs/reference.md lacks {name}"
    for page in ("experiments/results", "benchmarks/RESULTS"):
        assert (site / page / "index.html").exists(), f"{page} is not part of the site"
