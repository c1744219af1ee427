"""Every example in README.md and docs/*.md runs as written.

Blocks, per document in order, in a fresh interpreter of the repository's venv (one for all
documents; each document in its own namespace and working directory, a new temporary folder
holding only a link to ``scenes/``, so the documents' ``scenes/thorax.toml`` resolve and anything
an example writes lands in the temporary folder):

* ```` ```python ````: executed, all blocks of a document in one namespace (like a notebook);
* ```` ```toml ````: written to ``scene_L<line>.toml`` in the working folder, loaded with
  ``load_scene`` and rendered (relative mesh paths resolve against that folder, so an earlier
  python block can create the meshes);
* ```` ```bash ```` / ```` ```sh ````: only the ``taichi-xray ...`` commands (also after ``&&``,
  also ``.venv/bin/taichi-xray``) are run, each must exit with status 0; other commands
  (installers, CI scripts) are left alone.

The commands run through ``taichi_xray.cli.main`` inside that interpreter, not as one
``taichi-xray`` process each: a process costs ~5 s of start-up here (torch, Taichi), which would
put this file far over its time budget; the installed entry point itself is run by
tests/test_cli.py. ``render``, ``view`` and ``geometry`` commands without ``--size`` get
``--size 64x64`` (the detector's pixel count does not change whether a command works, only how
long it takes; all of a document's commands get the same size, so the images they pass on fit),
and ``view --offscreen`` renders at most 3 frames.
``view`` commands that need Vulkan count as passed where Vulkan is missing (exit status 3 with
its one-line message).

A document whose examples take longer than DOC_BUDGET_S fails with a message naming the block
that was running (make it smaller, or mark it not-run). A block is skipped only when the line
right before its opening fence is
``<!-- not-run: REASON -->`` (e.g. the GGUI window, a benchmark of many minutes, a GPU);
plain ```` ``` ```` blocks (messages, output) are text.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"python": "python", "py": "python", "toml": "toml", "bash": "bash", "sh": "bash", "shell": "bash"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


def documents() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def code_blocks(path: Path) -> list[dict]:
    """Fenced blocks of a Markdown file: {"lang", "code", "line" (1-based, of the first code
    line), "skip" (the not-run reason or None)}."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        marker = NOT_RUN.match(lines[j].strip()) if j >= 0 else None
        body, k = [], i + 1
        while k < len(lines) and not lines[k].strip().startswith(fence):
            body.append(lines[k][indent:] if lines[k][:indent].strip() == "" else lines[k])
            k += 1
        blocks.append({"lang": m.group("lang").lower(), "code": "\n".join(body) + "\n", "line": i + 2,
                       "skip": marker.group("reason") if marker else None})
        i = k + 1
    return blocks


def runnable(path: Path) -> list[dict]:
    return [dict(b, kind=RUN_LANGS[b["lang"]]) for b in code_blocks(path)
            if b["lang"] in RUN_LANGS and b["skip"] is None]


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


HELPERS = r'''
import os, shlex


def commands(code):
    """taichi-xray argument lists of a shell block (comments dropped, continuation lines joined)."""
    text = code.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        cmd = []
        for w in words + ["&&"]:
            if w in ("&&", ";", "||"):
                if cmd and os.path.basename(cmd[0]) == "taichi-xray":
                    out.append(cmd[1:])
                cmd = []
            else:
                cmd.append(w)
    return out


def with_size(argv):
    """The command at 64x64 pixels (unless it gives --size) and at most 3 off-screen frames."""
    argv = list(argv)
    sub = next((a for a in argv if not a.startswith("-")), None)
    if sub in ("render", "view", "geometry") and "--size" not in argv:
        argv += ["--size", "64x64"]
    if sub == "view" and "--frames" in argv:
        i = argv.index("--frames") + 1
        if i < len(argv) and argv[i].isdigit():
            argv[i] = str(min(int(argv[i]), 3))
    return argv
'''

RUNNER = HELPERS + r'''
import contextlib, io, json, signal, sys, time, traceback


class TooSlow(BaseException):  # not swallowed by an example's `except Exception`
    pass


def _too_slow(signum, frame):
    raise TooSlow()


def run_doc(doc, blocks):
    ns = {"__name__": "__main__"}
    for b in blocks:
        where = f"{doc}:{b['line']}"
        print(f"--- {where} ({b['kind']})", flush=True)
        try:
            if b["kind"] == "python":
                exec(compile(b["code"], where, "exec"), ns)
            elif b["kind"] == "toml":
                from taichi_xray.render import render
                from taichi_xray.scene import load_scene

                name = f"scene_L{b['line']}.toml"
                with open(name, "w") as f:
                    f.write(b["code"])
                res = render(load_scene(name))
                print(f"rendered {name}: {res.image.shape}", flush=True)
            else:
                from taichi_xray.cli import main
                from taichi_xray.viewer import vulkan_status

                for argv in commands(b["code"]):
                    argv = with_size(argv)
                    print("$ taichi-xray " + " ".join(argv), flush=True)
                    rc = main(argv)
                    if rc == 3 and "view" in argv and not vulkan_status()[0]:
                        print("(no Vulkan: the viewer command exited 3 as documented)", flush=True)
                        continue
                    if rc != 0:
                        raise RuntimeError(f"`taichi-xray {' '.join(argv)}` exited with status {rc}")
        except TooSlow:
            raise RuntimeError(f"{where}: the document's examples ran longer than {budget} s (this {b['kind']} block "
                               "was running): make the example smaller, or mark a block that must stay slow "
                               "with <!-- not-run: REASON --> right before it") from None
        except BaseException as exc:
            traceback.print_exc()
            raise RuntimeError(f"{where}: the {b['kind']} example failed ({type(exc).__name__}: {exc})") from None


docs, scenes, out, budget = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])
signal.signal(signal.SIGALRM, _too_slow)
base = os.getcwd()
results = {}
for i, d in enumerate(docs):
    cwd = os.path.join(base, f"doc{i}")
    os.mkdir(cwd)
    os.symlink(scenes, os.path.join(cwd, "scenes"), target_is_directory=True)
    os.chdir(cwd)
    log, error, t0 = io.StringIO(), None, time.perf_counter()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        signal.alarm(budget)
        try:
            run_doc(d["doc"], d["blocks"])
        except BaseException as exc:
            error = str(exc)
        finally:
            signal.alarm(0)
    os.chdir(base)
    text = "\n".join(line.rsplit("\r", 1)[-1] for line in log.getvalue().split("\n"))  # progress bars: last state
    results[d["doc"]] = {"error": error, "log": text[-8000:], "seconds": time.perf_counter() - t0}
    with open(out, "w") as f:
        json.dump(results, f)
'''


DOCS = [d for d in documents() if runnable(d)]
DOC_BUDGET_S = 120  # per document, on a busy shared machine; the whole file should stay near a minute


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # One interpreter for all documents (each in its own folder and namespace): a start costs
    # ~5 s here (torch, Taichi, first kernel compiles), a third of this file's budget per document.
    tmp = tmp_path_factory.mktemp("docs")
    (tmp / "docs.json").write_text(json.dumps([{"doc": _rel(d), "blocks": runnable(d)} for d in DOCS]))
    (tmp / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(TAICHI_XRAY_ARCH="cpu", MPLBACKEND="Agg")
    cmd = [sys.executable, str(tmp / "runner.py"), str(tmp / "docs.json"), str(ROOT / "scenes"),
           str(tmp / "results.json"), str(DOC_BUDGET_S)]
    try:
        r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                           timeout=DOC_BUDGET_S * len(DOCS) + 120)
        status = f"status {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    except subprocess.TimeoutExpired as exc:
        status = f"killed after {exc.timeout:.0f} s"
    got = json.loads((tmp / "results.json").read_text()) if (tmp / "results.json").exists() else {}
    return got, status


@pytest.mark.parametrize("doc", DOCS, ids=[_rel(d) for d in DOCS])
def test_examples_run(doc, results):
    got, status = results
    res = got.get(_rel(doc))
    assert res is not None, f"the runner stopped before {_rel(doc)} ({status})"
    assert res["error"] is None, f"{res['error']}\n--- output of {_rel(doc)}\n{res['log']}"


def test_skips_are_marked_and_justified():
    """Every not-run marker sits right before a code block and gives a reason; no document names a
    path of one machine."""
    machine = re.compile(r"(?<![\w.])(/work/|/home/|/root/|/Users/|[A-Z]:\\\\)")
    for doc in documents():
        text = doc.read_text(encoding="utf-8")
        markers = sum(1 for line in text.splitlines() if NOT_RUN.match(line.strip()))
        marked = [b for b in code_blocks(doc) if b["skip"] is not None]
        assert len(marked) == markers, f"{_rel(doc)}: a not-run marker is not right before a code block"
        for b in marked:
            assert len(b["skip"]) >= 10, f"{_rel(doc)}:{b['line']}: not-run needs a reason"
        if doc.name.startswith("CONTRIBUTING"):  # the contributors' working notes name the build machine
            continue
        bad = [f"{_rel(doc)}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if machine.search(line)]
        assert not bad, "machine paths in the documentation:\n" + "\n".join(bad)


def test_block_extraction(tmp_path):
    """The extractor on a small document: languages, skip markers (only right before a fence),
    indented blocks, and the commands a shell block yields."""
    import textwrap

    md = textwrap.dedent("""\
        Text.

        <!-- not-run: opens a window, nothing to check headless -->
        ```bash
        taichi-xray view scenes/thorax.toml
        ```

        <!-- not-run: too far from the block -->

        Some text in between.

        ```python
        x = 1
        ```
        * item

          ```toml
          [scene]
          ```
        ```
        plain
        ```
        """)
    p = tmp_path / "probe.md"
    p.write_text(md)
    bs = code_blocks(p)
    assert [(b["lang"], b["skip"] is not None) for b in bs] == [("bash", True), ("python", False), ("toml", False),
                                                                  ("", False)]
    assert bs[0]["skip"] == "opens a window, nothing to check headless"
    assert bs[1]["code"] == "x = 1\n" and bs[1]["line"] == 13
    assert bs[2]["code"] == "[scene]\n"
    ns: dict = {}
    exec(HELPERS, ns)
    cmds = ns["commands"]("bash .ci/install && .venv/bin/taichi-xray render a.toml -o a.png  # note\n"
                          "pip install x\ntaichi-xray info \\\n  b.toml\n")
    assert cmds == [["render", "a.toml", "-o", "a.png"], ["info", "b.toml"]]
    assert ns["with_size"](["render", "a.toml", "-o", "x.png"])[-2:] == ["--size", "64x64"]
    assert ns["with_size"](["info", "a.toml"]) == ["info", "a.toml"]
    assert ns["with_size"](["view", "a.toml", "--offscreen", "--frames", "24"]) == [
        "view", "a.toml", "--offscreen", "--frames", "3", "--size", "64x64"]
