"""Fault kinds (parameter validation, QMP arguments), the schedule format and the
schedule runner against a recording machine and agent."""

import json
from pathlib import Path

import pytest

from vblk_ci.disks.spec import DiskSpec, InjectError
from vblk_ci.errors import CheckFailed, QmpError, UsageError
from vblk_ci.faults import KINDS, Schedule, load_schedule, make_fault
from vblk_ci.faults import qmp as Q
from vblk_ci.faults.runner import ScheduleRun
from vblk_ci.faults.schedule import record_schedule
from vblk_ci.machine.argv import device_add_args

FILE_DISK = DiskSpec(id="f0", serial="vblk-f0", backend="file", path=Path("/tmp/f0.raw")).validate()
NULL_DISK = DiskSpec(id="n0", serial="vblk-n0").validate()


class RecordingMachine:
    """Keeps the QMP commands sent; answers each with {}."""

    def __init__(self, caps_version=(7, 2, 0)):
        self.sent = []

    def qmp(self, cmd, args=None, timeout=None):
        self.sent.append((cmd, args))
        return {}


# -- QMP builders ---------------------------------------------------------------------------


def test_blkdebug_rule_is_immediate_and_scoped_to_the_io_type():
    assert Q.blkdebug_rule("write", 5) == {"event": "none", "iotype": "write", "errno": 5,
                                           "immediately": True, "once": False}
    assert Q.blkdebug_rule("read", 28, once=True, sector=24) == {
        "event": "none", "iotype": "read", "errno": 28, "immediately": True, "once": True, "sector": 24}
    assert Q.blkdebug_rule("read", 0, delay_ns=10)["delay-ns"] == 10


def test_blkdebug_node_sits_on_the_existing_file_node():
    args = Q.blkdebug_add_args(FILE_DISK, "f0-dbg1", [Q.blkdebug_rule("read", 5)])
    assert args == {"driver": "blkdebug", "node-name": "f0-dbg1", "image": "f0-file", "discard": "unmap",
                    "inject-error": [Q.blkdebug_rule("read", 5)]}
    assert "inject-error" not in Q.blkdebug_add_args(FILE_DISK, "x", [])


def test_reopen_repeats_every_option_of_the_format_node():
    assert Q.reopen_format_args(FILE_DISK, "f0-dbg1") == {"options": [{
        "driver": "raw", "node-name": "f0-fmt", "read-only": False, "file": "f0-dbg1", "discard": "unmap"}]}
    no_discard = DiskSpec(id="f1", serial="s", backend="file", path=Path("/x"), discard=False)
    assert "discard" not in Q.reopen_format_args(no_discard, "f1-file")["options"][0]


def test_throttle_resize_qemu_io_and_set_action_arguments():
    assert Q.throttle_args(NULL_DISK, iops=50) == {
        "id": "/machine/peripheral/n0/virtio-backend", "bps": 0, "bps_rd": 0, "bps_wr": 0,
        "iops": 50, "iops_rd": 0, "iops_wr": 0}
    assert Q.resize_args(FILE_DISK, 1 << 20) == {"node-name": "f0-fmt", "size": 1 << 20}
    assert Q.qemu_io_args("f0-dbg1", "break write_aio t") == {"command-line": 'qemu-io f0-dbg1 "break write_aio t"'}
    assert Q.qemu_io_args("f0", "resume t", qdev=True) == {"command-line": 'qemu-io -d f0 "resume t"'}
    with pytest.raises(ValueError):
        Q.qemu_io_args("n", 'break "x"')
    assert Q.set_action_args("reset") == {"reboot": "reset"}


def test_error_policies_reach_device_add_only_when_set():
    assert "rerror" not in device_add_args(NULL_DISK, "rp0")
    disk = DiskSpec(id="p0", serial="s", rerror="stop", werror="enospc").validate()
    args = device_add_args(disk, "rp0")
    assert (args["rerror"], args["werror"]) == ("stop", "enospc")


@pytest.mark.parametrize("field,value", [("rerror", "enospc"), ("werror", "halt"), ("rerror", 1)])
def test_bad_error_policy_is_a_usage_error(field, value):
    with pytest.raises(UsageError, match=field):
        DiskSpec(id="p0", serial="s", **{field: value}).validate()


# -- fault kinds ----------------------------------------------------------------------------


def test_blkdebug_error_arms_and_disarms_by_reopen():
    m = RecordingMachine()
    fault = make_fault("blkdebug-error", FILE_DISK, {"op": "write", "errno": "ENOSPC", "once": True})
    fault.arm(m)
    (add, add_args), (reopen, reopen_args) = m.sent
    assert add == "blockdev-add" and add_args["image"] == "f0-file"
    assert add_args["inject-error"] == [Q.blkdebug_rule("write", 28, once=True)]
    assert reopen == "blockdev-reopen" and reopen_args["options"][0]["file"] == add_args["node-name"]
    fault.disarm(m)
    assert m.sent[2] == ("blockdev-reopen", Q.reopen_format_args(FILE_DISK, "f0-file"))
    assert m.sent[3] == ("blockdev-del", {"node-name": add_args["node-name"]})
    fault.disarm(m)  # twice is harmless
    assert len(m.sent) == 4


def test_each_arming_gets_a_fresh_blkdebug_node():
    m = RecordingMachine()
    a = make_fault("blkdebug-error", FILE_DISK, {"op": "read"})
    b = make_fault("blkdebug-error", FILE_DISK, {"op": "read"})
    a.arm(m)
    b.arm(m)
    assert a.node != b.node


def test_request_break_sets_and_resumes_a_breakpoint():
    m = RecordingMachine()
    fault = make_fault("request-break", FILE_DISK, {"op": "write"})
    fault.arm(m)
    assert m.sent[2][0] == "human-monitor-command"
    assert m.sent[2][1]["command-line"].startswith('qemu-io -d /machine/peripheral/f0/virtio-backend "break write_aio ')
    fault.disarm(m)
    assert "resume" in m.sent[3][1]["command-line"]
    assert [c for c, _ in m.sent[4:]] == ["blockdev-reopen", "blockdev-del"]


def test_an_hmp_error_text_is_an_error():
    class Refusing(RecordingMachine):
        def qmp(self, cmd, args=None, timeout=None):
            super().qmp(cmd, args, timeout)
            return "Error: Device does not have a block device backend\r\n" if cmd == "human-monitor-command" else {}

    with pytest.raises(QmpError, match="does not have a block device backend"):
        make_fault("request-break", FILE_DISK, {"op": "read"}).arm(Refusing())


def test_vm_wide_kinds():
    m = RecordingMachine()
    stop = make_fault("vm-stop")
    stop.arm(m)
    stop.disarm(m)
    reset = make_fault("system-reset")
    reset.arm(m)
    reset.disarm(m)
    assert m.sent == [("stop", None), ("cont", None), ("set-action", {"reboot": "reset"}),
                      ("system_reset", None), ("set-action", {"reboot": "shutdown"})]


def test_delay_needs_qemu_10():
    fault = make_fault("blkdebug-delay", FILE_DISK, {"op": "read", "delay_ns": 1000})
    assert "QEMU >= 10.0.0" in fault.requires((7, 2, 22))
    assert fault.requires((10, 0, 13)) is None


@pytest.mark.parametrize("kind,disk,params,match", [
    ("nope", FILE_DISK, {}, "unknown fault kind"),
    ("blkdebug-error", FILE_DISK, {}, "op: is required"),
    ("blkdebug-error", FILE_DISK, {"op": "trim"}, "op: must be one of"),
    ("blkdebug-error", FILE_DISK, {"op": "read", "errno": "EPERM"}, "errno"),
    ("blkdebug-error", FILE_DISK, {"op": "read", "once": 1}, "once: must be true or false"),
    ("blkdebug-error", FILE_DISK, {"op": "read", "sector": -1}, "sector"),
    ("blkdebug-error", FILE_DISK, {"op": "read", "colour": 1}, "colour: unknown parameter"),
    ("blkdebug-error", NULL_DISK, {"op": "read"}, "file backend"),
    ("blkdebug-error", None, {"op": "read"}, "disk: is required"),
    ("blkdebug-error", DiskSpec(id="f9", serial="s", backend="file", path=Path("/x"),
                                inject_errors=(InjectError(),)), {"op": "read"}, "fixed inject_errors"),
    ("blkdebug-delay", FILE_DISK, {"op": "read", "delay_ns": 0}, "delay_ns"),
    ("throttle", NULL_DISK, {}, "give iops or bps"),
    ("throttle", NULL_DISK, {"iops": True}, "iops"),
    ("resize", NULL_DISK, {"size_bytes": 1000}, "multiple of the disk's block size"),
    ("request-break", FILE_DISK, {"op": "flush"}, "op: must be one of read, write"),
    ("blkdebug-error", FILE_DISK, {"op": "flush"}, "once: must be true for op flush"),
])
def test_bad_fault_parameters(kind, disk, params, match):
    with pytest.raises(UsageError, match=match):
        make_fault(kind, disk, params)


def test_every_kind_is_described():
    assert set(KINDS) >= {"blkdebug-error", "blkdebug-delay", "request-break", "vm-stop", "system-reset",
                          "device-del", "throttle", "resize"}
    assert all(cls.description for cls in KINDS.values())


# -- schedules ------------------------------------------------------------------------------

GOOD = {"name": "burst", "seed": 7, "faults": [
    {"trigger": {"disk": "f0", "completions": 1000, "jitter": 200}, "kind": "blkdebug-error", "disk": "f0",
     "params": {"op": "write"}, "duration_s": 0.05},
    {"trigger": {"at_s": 2.5}, "kind": "vm-stop", "duration_s": 1},
    {"trigger": {"disk": "f0", "completions": 5000}, "kind": "device-del", "disk": "f0"},
]}


def test_schedule_round_trips_through_json(tmp_path):
    schedule = Schedule.from_json(GOOD)
    path = tmp_path / "s.json"
    schedule.save(path)
    assert json.loads(path.read_text()) == {**GOOD, "faults": [
        GOOD["faults"][0], {**GOOD["faults"][1], "duration_s": 1.0}, GOOD["faults"][2]]}
    assert load_schedule(path) == schedule


def test_jitter_comes_from_the_seed():
    a = Schedule.from_json(GOOD).thresholds()
    assert a == Schedule.from_json(GOOD).thresholds()
    assert 1000 <= a[0] <= 1200 and a[1] is None and a[2] == 5000
    other = [Schedule.from_json({**GOOD, "seed": s}).thresholds()[0] for s in range(20)]
    assert len(set(other)) > 1


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(faults=[]), "faults must be a non-empty list"),
    (lambda d: d.update(seed=-1), "seed must be a non-negative integer"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["faults"][0].update(kind="meteor"), r"faults\[0\]: kind must be one of"),
    (lambda d: d["faults"][0].pop("disk"), "needs a disk id"),
    (lambda d: d["faults"][1].update(disk="f0"), "acts on the whole VM"),
    (lambda d: d["faults"][2].update(duration_s=1), "one-shot"),
    (lambda d: d["faults"][0].update(duration_s=-1), "duration_s must be seconds"),
    (lambda d: d["faults"][0]["trigger"].update(completions=-5), "completions must be"),
    (lambda d: d["faults"][0]["trigger"].update(at_s=1), "at_s cannot be combined"),
    (lambda d: d["faults"][0].update(trigger={}), "give disk and completions, or at_s"),
    (lambda d: d["faults"][0]["params"].update(op="erase"), r"faults\[0\]: fault 'blkdebug-error': op"),
    (lambda d: d["faults"][0].update(params={}), "op: is required"),
])
def test_bad_schedules_are_one_line_usage_errors(change, match):
    doc = json.loads(json.dumps(GOOD))
    change(doc)
    with pytest.raises(UsageError, match=match) as info:
        Schedule.from_json(doc)
    assert "\n" not in str(info.value)


def test_load_schedule_errors(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        load_schedule(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(UsageError, match="not JSON"):
        load_schedule(tmp_path / "bad.json")


def test_bind_checks_disks_of_the_scenario():
    schedule = Schedule.from_json(GOOD)
    with pytest.raises(UsageError, match="no disk 'f0'"):
        schedule.bind({"g0": FILE_DISK})
    faults = schedule.bind({"f0": FILE_DISK})
    assert [f.kind for f in faults] == ["blkdebug-error", "vm-stop", "device-del"]


def test_record_schedule_keeps_every_schedule_of_a_run(tmp_path):
    a = Schedule.from_json(GOOD)
    b = Schedule.from_json({**GOOD, "name": "other"})
    record_schedule(tmp_path, "s1", a, [{"index": 0}])
    record_schedule(tmp_path, "s1", b, [])
    record_schedule(tmp_path, "s1", a, [{"index": 1}])  # a rerun replaces its own entry
    doc = json.loads((tmp_path / "schedule.json").read_text())
    assert [(s["scenario"], s["schedule"]["name"], s["fired"]) for s in doc["schedules"]] == [
        ("s1", "other", []), ("s1", "burst", [{"index": 1}])]


# -- the schedule runner --------------------------------------------------------------------


class ScriptedAgent:
    """Progress events served in order, as AgentClient.wait_progress would read them."""

    def __init__(self, events):
        self.events = list(events)
        self.progress = {}

    def wait_progress(self, job, until, timeout):
        while self.events:
            ev = self.events.pop(0)
            self.progress[job] = ev
            if until(ev):
                return ev
        return None

    def ping(self):
        return {}


def _ev(seq, completions, errors=0):
    return {"event": "progress", "job": 1, "seq": seq, "completions": completions, "in_flight": 8,
            "prepared": completions + 8,
            "res": {"0": completions - errors, **({"1": errors} if errors else {})}}


def test_runner_fires_at_the_completion_count_and_disarms_after_the_duration():
    schedule = Schedule.from_json({"name": "s", "seed": 0, "faults": [
        {"trigger": {"disk": "f0", "completions": 100}, "kind": "blkdebug-error", "disk": "f0",
         "params": {"op": "write"}, "duration_s": 0}]})
    m = RecordingMachine()
    agent = ScriptedAgent([_ev(0, 10), _ev(1, 99), _ev(2, 130), _ev(3, 150, 20), _ev(4, 157, 21),
                           _ev(5, 158, 22), _ev(6, 170, 22)])
    run = ScheduleRun(m, agent, schedule, schedule.bind({"f0": FILE_DISK}), {"f0": 1}, 1.0)
    fired = run.run()
    assert fired[0]["progress_at_arm"]["completions"] == 130
    # settled: the first event after the disarm had 158 I/Os prepared; wait until 158 completed
    assert fired[0]["progress_after_disarm"]["completions"] == 158
    assert fired[0]["progress_after_disarm"]["res"] == {"0": 136, "1": 22}
    assert [c for c, _ in m.sent] == ["blockdev-add", "blockdev-reopen", "blockdev-reopen", "blockdev-del"]


def test_runner_fails_when_the_trigger_is_never_reached():
    schedule = Schedule.from_json({"name": "s", "seed": 0, "faults": [
        {"trigger": {"disk": "f0", "completions": 1000}, "kind": "vm-stop"}]})
    run = ScheduleRun(RecordingMachine(), ScriptedAgent([_ev(0, 10)]), schedule, schedule.bind({"f0": FILE_DISK}),
                      {"f0": 1}, 0.1)
    with pytest.raises(CheckFailed, match="waits for 1000 completions"):
        run.run()


def test_runner_leaves_faults_without_duration_armed_for_the_scenario():
    schedule = Schedule.from_json({"name": "s", "seed": 0, "faults": [
        {"trigger": {"at_s": 0}, "kind": "vm-stop"}]})
    m = RecordingMachine()
    run = ScheduleRun(m, ScriptedAgent([]), schedule, schedule.bind({}), {}, 0.1)
    run.run()
    assert m.sent == [("stop", None)]
    run.disarm_all()
    assert m.sent[-1] == ("cont", None)


# -- --schedule FILE ------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_example_schedule_is_valid():
    from vblk_ci.scenarios.fault_schedule_file import check_schedule_file

    schedule = check_schedule_file(REPO / "ci" / "schedules" / "eio-stop-unplug.json")
    assert schedule.disk_ids() == ["s0", "s1"]
    assert [f.kind for f in schedule.faults] == ["blkdebug-error", "throttle", "vm-stop", "device-del"]


@pytest.mark.parametrize("doc,match", [
    ({"faults": [{"trigger": {"disk": f"d{i}", "completions": 1}, "kind": "vm-stop"} for i in range(5)]},
     "at most 4"),
    ({"faults": [{"trigger": {"at_s": 0}, "kind": "throttle", "disk": "9bad", "params": {"iops": 1}}]}, "disk '9bad'"),
    ({"faults": [{"trigger": {"at_s": 0}, "kind": "resize", "disk": "d0", "params": {"size_bytes": 1000}}]},
     "multiple of the disk's block size"),
])
def test_schedule_files_that_cannot_run_are_usage_errors(tmp_path, doc, match):
    from vblk_ci.scenarios.fault_schedule_file import check_schedule_file

    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=match):
        check_schedule_file(path)


def test_cli_rejects_a_bad_schedule_before_anything_boots(tmp_path):
    from vblk_ci import cli

    kernel, initramfs = tmp_path / "bzImage", tmp_path / "initramfs"
    kernel.write_bytes(b"k")
    initramfs.write_bytes(b"i")
    (tmp_path / "s.json").write_text('{"faults": [{"trigger": {"at_s": 0}, "kind": "meteor"}]}')
    out = tmp_path / "out"
    rc = cli.main(["run", "--suite", "smoke", "--kernel", str(kernel), "--initramfs", str(initramfs),
                   "--schedule", str(tmp_path / "s.json"), "--out", str(out)])
    assert rc == 2
    assert not out.exists()


def test_the_schedule_scenario_runs_only_with_a_schedule():
    from vblk_ci.runner import Plan, _planned_scenarios

    plan = Plan(kernel=Path("k"), initramfs=Path("i"), run_dir=Path("r"), suite="smoke")
    assert [c.name for c in _planned_scenarios(plan)] == ["smoke"]
    with_schedule = Plan(kernel=Path("k"), initramfs=Path("i"), run_dir=Path("r"), suite="smoke",
                         schedule=Path("s.json"))
    assert [c.name for c in _planned_scenarios(with_schedule)] == ["smoke", "fault-schedule-file"]
