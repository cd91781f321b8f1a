"""ci/action/action.yml: a composite action whose steps are the scripts beside it, wired
consistently (inputs, step ids, outputs, environment the scripts read)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION_DIR = ROOT / "ci" / "action"
ACTION = yaml.safe_load((ACTION_DIR / "action.yml").read_text())
STEPS = ACTION["runs"]["steps"]


def test_composite_with_named_steps_and_documented_inputs_and_outputs():
    assert ACTION["runs"]["using"] == "composite"  # a container action cannot pass --device /dev/kvm
    assert ACTION["name"] and ACTION["description"]
    assert all(s.get("name") for s in STEPS)
    for name, spec in ACTION["inputs"].items():
        assert spec.get("description"), name
        assert "default" in spec, f"{name}: every input is optional with a default"
    for name, spec in ACTION["outputs"].items():
        assert spec.get("description") and spec.get("value"), name


def test_every_run_step_is_an_executable_script_here_with_bash():
    scripts = []
    for step in STEPS:
        if "run" in step:
            assert step.get("shell") == "bash", step["name"]
            m = re.fullmatch(r"\$\{\{ github\.action_path \}\}/([\w.-]+\.sh)", step["run"].strip())
            assert m, f"{step['name']}: a step runs one script beside action.yml, not inline shell"
            script = ACTION_DIR / m.group(1)
            assert script.is_file() and os.access(script, os.X_OK), script
            scripts.append(script)
        else:
            assert re.fullmatch(r"actions/(cache|upload-artifact)@v\d+", step["uses"]), step["uses"]
    assert {s.name for s in scripts} == {p.name for p in ACTION_DIR.glob("*.sh")}, "no script left unused"


def test_expressions_name_existing_inputs_step_ids_and_script_variables():
    text = (ACTION_DIR / "action.yml").read_text()
    ids = {s["id"] for s in STEPS if "id" in s}
    for name in re.findall(r"inputs\.([\w-]+)", text):
        assert name in ACTION["inputs"], name
    for sid, output in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", text):
        assert sid in ids, sid
        script = next(s for s in STEPS if s.get("id") == sid)["run"].split("/")[-1]
        assert f"{output}=" in (ACTION_DIR / script).read_text(), f"{script} never writes {output}="
    for step in STEPS:
        if "run" not in step:
            continue
        body = (ACTION_DIR / step["run"].split("/")[-1]).read_text()
        wanted = set(re.findall(r"\$\{?(VBLK_[A-Z_]+)", body)) - {"VBLK_DRY_RUN", "VBLK_TAG", "VBLK_CI_CACHE"}
        given = set(step.get("env", {}))
        assert wanted <= given, f"{step['name']}: the script reads {sorted(wanted - given)} that the step does not set"


def test_artifact_upload_runs_even_when_a_suite_failed():
    upload = next(s for s in STEPS if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ inputs.out }}"


def test_series_gates_step_runs_vblk_ci_gates_when_asked():
    step = next(s for s in STEPS if s.get("run", "").endswith("/gates.sh"))
    assert step["if"] == "inputs.gates == 'true'" and ACTION["inputs"]["gates"]["default"] == "false"
    assert STEPS.index(step) < next(i for i, s in enumerate(STEPS) if s.get("id") == "run"), "gates before suites"
    body = (ACTION_DIR / "gates.sh").read_text()
    assert "vblk_ci.cli gates" in body and "--where docker" in body
