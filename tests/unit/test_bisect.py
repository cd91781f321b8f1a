"""vblk-ci bisect's driving of git bisect, on a real git repository with a planted regression
(the judge is a stand-in for build + run: here it reads the tree, which is all it needs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vblk_ci.bisect import BAD, GOOD, SKIP, BisectPlan, bisect
from vblk_ci.errors import EXIT_INFRA, UsageError


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """c0..c7; c4 plants the bug; c2 does not build."""
    r = tmp_path / "linux"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    for i in range(8):
        (r / "driver.c").write_text(f"version {i}\n" + ("ioprio lost\n" if i >= 4 else ""))
        (r / "BROKEN").write_text("x") if i == 2 else (r / "BROKEN").unlink(missing_ok=True)
        git(r, "add", "-A")
        git(r, "commit", "-q", "-m", f"c{i}" + (": reintroduce the ioprio bug" if i == 4 else ""))
    return r


def judge_by_tree(plan, commit, run_dir, emit):
    if (plan.tree / "BROKEN").exists():
        return SKIP, "does not build", None, 1.0, None
    run_dir.mkdir(parents=True)
    bad = "ioprio lost" in (plan.tree / "driver.c").read_text()
    return (BAD if bad else GOOD), "fail" if bad else "pass", str(run_dir), 1.0, 2.0


def plan(repo, tmp_path, **kw):
    args = dict(tree=repo, good="HEAD~7", bad="HEAD", out=tmp_path / "out", initramfs=tmp_path / "i",
                scenarios=("driver-ioprio",))
    args.update(kw)
    return BisectPlan(**args)


def test_finds_the_planted_commit_and_puts_the_tree_back(repo, tmp_path):
    head = git(repo, "rev-parse", "HEAD")
    result = bisect(plan(repo, tmp_path), judge=judge_by_tree)
    assert result.first_bad_subject == "c4: reintroduce the ioprio bug" and result.exit_code == 0
    assert result.first_bad_run_dir and Path(result.first_bad_run_dir).is_dir()
    assert len(result.steps) <= 4  # log2(7) steps, plus at most one skip
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "symbolic-ref", "--short", "HEAD") == "main"


def test_a_bad_end_that_is_the_first_bad_commit_is_run_for_its_evidence(repo, tmp_path):
    result = bisect(plan(repo, tmp_path, good="HEAD~4", bad="HEAD~3"), judge=judge_by_tree)
    assert result.first_bad_subject.startswith("c4") and result.first_bad_run_dir
    assert [s.verdict for s in result.steps] == [BAD]


def test_only_skips_left_is_not_a_verdict(repo, tmp_path):
    def never(plan, commit, run_dir, emit):
        return SKIP, "does not build", None, None, None

    result = bisect(plan(repo, tmp_path), judge=never)
    assert result.first_bad is None and result.exit_code == EXIT_INFRA and "only skipped" in result.reason


@pytest.mark.parametrize("change, message", [
    (dict(scenarios=(), suite=None), "exactly one of --suite, --scenario, --bundle"),
    (dict(suite="driver"), "exactly one of"),
    (dict(good="nope"), r"git rev-parse --verify nope\^\{commit\} in \S+: fatal: Needed a single revision$"),
    (dict(good="HEAD", bad="HEAD~2"), "is not an ancestor"),
])
def test_bad_plans_are_refused_before_git_bisect_starts(repo, tmp_path, change, message):
    with pytest.raises(UsageError, match=message):
        bisect(plan(repo, tmp_path, **change), judge=judge_by_tree)
    assert not (repo / ".git" / "BISECT_START").exists()


def test_a_dirty_tree_is_refused(repo, tmp_path):
    (repo / "driver.c").write_text("local edit\n")
    with pytest.raises(UsageError, match="uncommitted changes"):
        bisect(plan(repo, tmp_path), judge=judge_by_tree)
