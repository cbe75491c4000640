"""The docs cannot drift from the code: the Python example runs, and every `mcl` command written in
the README and docs is accepted by the command line; the ones that need no outside data are run."""

import re
import runpy
import shlex
from pathlib import Path

import pytest

from mcl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    """The contents of the fenced blocks tagged bash/sh or untagged."""
    blocks, current, lang = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, lang = [], line[3:].strip()
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(current))
                current = None
            continue
        if current is not None:
            current.append(line)
    return blocks


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `mcl ...` command in the README's and docs' shell blocks (continuations joined, `&&` split,
    launchers such as `srun` or `torchrun ... $(which mcl)` stripped)."""
    found = []
    for path in DOCS:
        for block in shell_blocks(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].replace("$(which mcl)", "mcl")
                for part in line.split("&&"):
                    words = shlex.split(part)
                    if "mcl" in words:
                        found.append((path.name, words[words.index("mcl") + 1:]))
    return found


COMMANDS = documented_commands()


def test_docs_contain_commands():
    assert len(COMMANDS) >= 15
    assert {tokens[0] for _, tokens in COMMANDS} >= {"pretrain", "export", "finetune", "eval", "montage", "data"}


@pytest.mark.parametrize("where,tokens", COMMANDS, ids=[" ".join(t)[:60] for _, t in COMMANDS])
def test_documented_command_is_accepted(where, tokens):
    parser, handlers = build_parser()
    if tokens == ["--help"]:
        return
    args, extra = parser.parse_known_args(tokens)
    module = handlers[args.command]
    for token in extra:
        assert getattr(module, "ACCEPTS_OVERRIDES", False) and "=" in token, (where, token)
    if args.command == "pretrain":          # the config must resolve too: a dry run does that without data
        from mcl.commands.pretrain import resolve
        _, cfg = resolve(args, extra)
        assert cfg.data.batch_size >= 2


def test_quickstart_commands_run(tmp_path, capsys, monkeypatch):
    """The README guide's commands that need no outside data, run for real."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert main(["pretrain", "--config", "cpu_smoke", "--dry-run"]) == 0
    assert main(["pretrain", "--config", "paper_r50_in1k_100ep", "--dry-run"]) == 0
    assert main(["data", "synth", "--out", "synth", "--num", "4", "--size", "64"]) == 0
    assert (tmp_path / "synth" / "annotations.json").is_file()
    out = capsys.readouterr().out
    for name in ("pretrain", "finetune", "export", "eval", "montage", "bench", "data"):
        assert name in out


def test_python_api_example_runs():
    namespace = runpy.run_path(str(ROOT / "examples" / "own_training_loop.py"))
    losses = namespace["main"](steps=2)
    assert len(losses) == 2 and all(x == x for x in losses)


def test_ci_runs_the_readmes_test_command():
    """The README's test command, verbatim, is what CI runs."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "pip install -e '.[test]'" in line)
    assert "ruff check ." in command and "pytest -q" in command
    assert command in (ROOT / ".ci" / "run").read_text()


def test_every_method_section_a_docstring_cites_exists():
    """Docstrings point at docs/method.md sections by title; each title is a heading there."""
    headings = [line[3:] for line in (ROOT / "docs" / "method.md").read_text().splitlines() if line.startswith("## ")]
    cited = set()
    for folder in ("src", "tests", "configs", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and path.is_file():
                cited |= set(re.findall(r'docs/method\.md, "([^"]+)"', path.read_text()))
    assert {"The loss", "MoCo v2", "Optimisation"} <= cited
    missing = sorted(title for title in cited if not any(h.startswith(title) for h in headings))
    assert not missing, f"cited in docstrings but not a heading of docs/method.md: {missing}"
    assert not [p for p in (ROOT / "src").rglob("*.py") if "MCL-SPEC" in p.read_text()]   # the spec is not here


def test_every_results_section_the_code_cites_exists():
    """Comments and docstrings point at docs/results.md sections by title; each title starts a heading there."""
    headings = [line.lstrip("#").strip() for line in (ROOT / "docs" / "results.md").read_text().splitlines()
                if line.startswith("#")]
    cited = set()
    for folder in ("src", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= set(re.findall(r'docs/results\.md, "([^"]+)"', path.read_text()))
    assert {"The regime", "Why MCL lost"} <= cited
    missing = sorted(title for title in cited if not any(h.startswith(title) for h in headings))
    assert not missing, f"cited in the code but not a heading of docs/results.md: {missing}"
