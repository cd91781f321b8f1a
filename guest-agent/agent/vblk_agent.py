#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""vblk-agent: the guest side of the vblk-ci host<->guest protocol.

Runs inside the test guest, started by the busybox /init.  It serves one
JSON request per line on the virtio-serial port named ``org.vblk-ci.agent``
and answers one JSON object per line.  The contract is
``guest-agent/PROTOCOL.md``; this file is its only implementation.

Design constraints that shape the code:

* stdlib only, single file: the guest image carries nothing else;
* the guest runs under emulation, so start-up and per-call overhead matter:
  no argparse, no eager subprocess/traceback imports, no regexes of our own;
* there is no udev in the guest: device nodes are found through sysfs and
  created with mknod when devtmpfs has not made them;
* a bad request must never kill the agent: every failure becomes a typed
  error reply and the loop goes on.
"""

import base64
import errno
import json
import os
import stat
import sys
import time

PORT_NAME = "org.vblk-ci.agent"
DEFAULT_ENGINE = "/usr/bin/vblk-engine"
#: The binaries ``engine``/``spawn`` may run (their ``engine`` param): the --engine path, and the
#: 32-bit build (a compat io_uring caller) beside it.
ENGINE_NAMES = ("vblk-engine", "vblk-engine32")
CHARDEV_CLASS = "vblk-generic"
POLL_INTERVAL_S = 0.010
MAX_LINE_BYTES = 16 << 20
READ_CHUNK = 65536

USAGE = (
    "usage: vblk_agent.py [--port PATH | --stdio] [--engine PATH] "
    "[--sysfs-root DIR] [--dev-root DIR] [--discover-timeout S] [--no-poweroff]"
)

_REQUIRED = object()


class AgentError(Exception):
    """A typed protocol error: becomes ``{"error": {"type", "message"}}``.

    ``data`` is optional structured detail (for example an errno) that the
    host can test without parsing the message.
    """

    def __init__(self, type_, message, data=None):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.data = data


def _bad_params(message):
    return AgentError("BadParams", message)


# ---- parameter validation ------------------------------------------------
#
# Each handler declares its parameters as name -> (checker, default).  The
# dispatcher checks them all before calling, so handlers never see a wrong
# type and a host typo ("timeout" for "timeout_s") is reported, not ignored.


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def p_str(name, value):
    if not isinstance(value, str):
        raise _bad_params(f"{name} must be a string")
    return value


def p_bool(name, value):
    if not isinstance(value, bool):
        raise _bad_params(f"{name} must be a boolean")
    return value


def p_uint(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad_params(f"{name} must be a non-negative integer")
    return value


def p_timeout(name, value):
    if not _is_number(value) or not 0 <= value < float("inf"):
        raise _bad_params(f"{name} must be a non-negative number")
    return float(value)


def p_str_list(name, value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad_params(f"{name} must be a list of strings")
    return value


def p_engine_name(name, value):
    if not isinstance(value, str) or value not in ENGINE_NAMES:
        raise _bad_params(f"{name} must be one of {', '.join(ENGINE_NAMES)}")
    return value


def p_disk_name(name, value):
    """A bare sysfs name such as ``vdb``: it is joined into paths."""
    p_str(name, value)
    if not value or "/" in value or value in (".", "..") or "\0" in value:
        raise _bad_params(f"{name} must be a device name like 'vdb'")
    return value


def p_path(name, value):
    p_str(name, value)
    if not value or "\0" in value:
        raise _bad_params(f"{name} must be a non-empty path")
    return value


HANDLERS = {}


def method(method_name, /, **schema):
    """Register a handler under ``method_name`` with its parameter schema."""

    def register(func):
        func.schema = schema
        HANDLERS[method_name] = func
        return func

    return register


def check_params(schema, params):
    """Return handler kwargs from ``params`` or raise BadParams."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _bad_params("params must be an object")
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise _bad_params(f"unknown parameter(s): {', '.join(unknown)}")
    kwargs = {}
    for pname, (checker, default) in schema.items():
        if pname in params:
            kwargs[pname] = checker(pname, params[pname])
        elif default is _REQUIRED:
            raise _bad_params(f"missing parameter: {pname}")
        else:
            kwargs[pname] = default
    return kwargs


# ---- small file helpers ----------------------------------------------------


def _read_text(path, default=None):
    """Read a small sysfs attribute, stripped; ``default`` if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return default


def _read_int(path, default=None):
    text = _read_text(path)
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def _parse_devno(text):
    """``"250:1"`` -> ``os.makedev(250, 1)``, or None if malformed."""
    try:
        major, minor = text.split(":")
        return os.makedev(int(major), int(minor))
    except (AttributeError, ValueError):
        return None


def _decode(data):
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")


class Agent:
    """Protocol state plus the handlers; independent of the transport.

    ``sysfs_root`` and ``dev_root`` prefix ``/sys`` and ``/dev`` so the unit
    tests can run the disk scan against a fake tree.
    """

    def __init__(self, sysfs_root="/", dev_root="/", engine=DEFAULT_ENGINE,
                 allow_poweroff=True):
        self.sys = os.path.join(sysfs_root, "sys")
        self.dev = os.path.join(dev_root, "dev")
        self.engine_path = engine
        self.engine32_path = os.path.join(os.path.dirname(engine), "vblk-engine32")
        self.allow_poweroff = allow_poweroff
        self.after_reply = None
        self.stop = False
        self._made_nodes = set()
        self._kmsg_fd = None
        self._kmsg_next = 0
        self._kmsg_buf = b""
        self._mknod_failed = set()
        self._jobs = {}
        self._next_job = 1
        self.emit = None  # set by serve(): sends one unsolicited event (thread-safe)

    def engine_binary(self, name):
        """Path of the engine binary ``name`` (one of ENGINE_NAMES) runs."""
        return self.engine32_path if name == "vblk-engine32" else self.engine_path

    def power_off(self):
        """Run after the poweroff reply went out: stop serving, then power off."""
        self.stop = True
        if self.allow_poweroff:
            _power_off_now()
        else:
            _log("poweroff requested; --no-poweroff given, exiting instead")

    # ---- request handling -------------------------------------------------

    def handle_line(self, line):
        """Turn one request line (bytes, no newline) into a reply dict."""
        try:
            req = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return _error_reply(None, AgentError("BadRequest", f"not a JSON line: {e}"))
        if not isinstance(req, dict):
            return _error_reply(None, AgentError("BadRequest", "request must be a JSON object"))
        req_id = req.get("id")
        name = req.get("method")
        if not isinstance(req_id, int) or isinstance(req_id, bool):
            return _error_reply(None, AgentError("BadRequest", "request needs an integer 'id'"))
        if not isinstance(name, str):
            return _error_reply(None, AgentError("BadRequest", "request needs a string 'method'"))
        return self.call(req_id, name, req.get("params"))

    def call(self, req_id, name, params):
        """Run one method and build its reply; never raises."""
        func = HANDLERS.get(name)
        try:
            if func is None:
                raise AgentError("UnknownMethod", f"no method {name!r}")
            kwargs = check_params(func.schema, params)
            return {"id": req_id, "result": func(self, **kwargs)}
        except AgentError as e:
            return _error_reply(req_id, e)
        except OSError as e:
            return _error_reply(req_id, _os_error(e))
        except Exception as e:  # the agent must survive any handler bug
            return _error_reply(req_id, AgentError("InternalError", f"{type(e).__name__}: {e}"))

    # ---- disks ----------------------------------------------------------------

    def _chardev(self, name):
        """(node path or None, "maj:min" or None) for disk ``name``.

        The node is created (or replaced, if a stale node of ours has another
        device number after a replug) because nothing else will in a guest
        without udev.
        """
        cname = name + "c0"
        devno_text = _read_text(os.path.join(self.sys, "class", CHARDEV_CLASS, cname, "dev"))
        devno = _parse_devno(devno_text)
        if devno is None:
            return None, None
        node = os.path.join(self.dev, cname)
        try:
            self._ensure_node(node, devno)
        except OSError as e:
            if node not in self._mknod_failed:  # wait_disk retries every 10 ms
                self._mknod_failed.add(node)
                _log(f"cannot create {node}: {e}")
            return None, devno_text
        return node, devno_text

    def _ensure_node(self, node, devno):
        try:
            st = os.stat(node)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISCHR(st.st_mode) and st.st_rdev == devno:
            return
        if st is not None:
            os.unlink(node)
        os.mknod(node, stat.S_IFCHR | 0o600, devno)
        self._made_nodes.add(node)

    def disk(self, name):
        """The PROTOCOL disk object for ``/sys/block/<name>``, or None."""
        base = os.path.join(self.sys, "block", name)
        sectors = _read_int(os.path.join(base, "size"))
        if sectors is None:
            return None
        lbs = _read_int(os.path.join(base, "queue", "logical_block_size"), 512)
        try:
            nr_hw_queues = len(os.listdir(os.path.join(base, "mq")))
        except OSError:
            nr_hw_queues = 0
        chardev, devno = self._chardev(name)
        return {
            "name": name,
            "serial": _read_text(os.path.join(base, "serial")),
            "size_bytes": sectors * 512,
            "logical_block_size": lbs,
            "physical_block_size": _read_int(
                os.path.join(base, "queue", "physical_block_size"), lbs),
            "read_only": _read_text(os.path.join(base, "ro")) == "1",
            "nr_hw_queues": nr_hw_queues,
            "chardev": chardev,
            "chardev_devno": devno,
            "blockdev": os.path.join(self.dev, name),
        }

    def disk_names(self):
        """virtio-blk disk names (vda, vdb, ..., vdaa) in /sys/block, sorted."""
        try:
            names = os.listdir(os.path.join(self.sys, "block"))
        except FileNotFoundError:
            return []
        return sorted(n for n in names
                      if n.startswith("vd") and len(n) > 2 and n[2:].isalpha()
                      and n[2:].islower())

    def find_serial(self, serial):
        """Name of the first disk whose serial is ``serial``, else None.

        Reads only the serial files: this runs every 10 ms in wait_disk.
        """
        for name in self.disk_names():
            if _read_text(os.path.join(self.sys, "block", name, "serial")) == serial:
                return name
        return None

    # ---- dmesg --------------------------------------------------------------

    def _kmsg_open(self):
        if self._kmsg_fd is not None:
            os.close(self._kmsg_fd)
            self._kmsg_fd = None
        self._kmsg_fd = os.open(os.path.join(self.dev, "kmsg"), os.O_RDONLY | os.O_NONBLOCK)
        self._kmsg_next = 0
        self._kmsg_buf = b""

    def _kmsg_read_all(self):
        """Yield raw record lines until the log is drained.

        /dev/kmsg returns one record per read(); splitting on newlines also
        handles a plain file, which is what the unit tests use.
        """
        while True:
            try:
                chunk = os.read(self._kmsg_fd, READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten: go on
                    continue
                raise
            if not chunk:
                break
            self._kmsg_buf += chunk
            *lines, self._kmsg_buf = self._kmsg_buf.split(b"\n")
            yield from lines


def _parse_kmsg(line):
    """``b"6,123,456789,-;text"`` -> record dict; None for continuation lines."""
    if not line or line[:1] == b" ":
        return None
    head, sep, text = line.partition(b";")
    fields = head.split(b",")
    if not sep or len(fields) < 3:
        return None
    try:
        prefix, seq, ts_us = int(fields[0]), int(fields[1]), int(fields[2])
    except ValueError:
        return None
    return {"seq": seq, "level": prefix & 7, "ts_us": ts_us,
            "text": text.decode("utf-8", "replace")}


def _error_reply(req_id, err):
    body = {"type": err.type, "message": err.message}
    if err.data is not None:
        body["data"] = err.data
    return {"id": req_id, "error": body}


def _os_error(e):
    """OSError -> typed ``OSError`` reply carrying the errno for the host."""
    code = e.errno or 0
    return AgentError("OSError", str(e),
                      {"errno": code, "errno_name": errno.errorcode.get(code, "")})


def _log(msg):
    """Diagnostics go to stderr (the guest console); never to the port."""
    try:
        sys.stderr.write(f"vblk-agent: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _boot_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _wait_until(timeout_s, probe):
    """Call ``probe`` every 10 ms until it returns non-None or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL_S)


# ---- methods -----------------------------------------------------------------


@method("ping", token=(p_str, _REQUIRED))
def m_ping(agent, token):
    return {"token": token, "uptime_s": _boot_ns() / 1e9}


@method("disks")
def m_disks(agent):
    disks = (agent.disk(name) for name in agent.disk_names())
    return [d for d in disks if d is not None]


@method("wait_disk", serial=(p_str, _REQUIRED), timeout_s=(p_timeout, 10.0),
        chardev=(p_bool, True))
def m_wait_disk(agent, serial, timeout_s, chardev):
    seen = {}

    def probe():
        name = agent.find_serial(serial)
        if name is None:
            return None
        seen["name"] = name
        disk = agent.disk(name)
        if disk is None or (chardev and disk["chardev"] is None):
            return None
        return disk

    disk = _wait_until(timeout_s, probe)
    if disk is not None:
        return disk
    if "name" in seen:
        what = f"disk {seen['name']} with serial {serial!r} has no usable /dev/{seen['name']}c0"
    else:
        what = f"no disk with serial {serial!r}"
        if not os.path.isdir(os.path.join(agent.sys, "bus", "virtio", "drivers", "virtio_blk")):
            what += (" (this guest has no virtio_blk driver: a kernel with CONFIG_VIRTIO_BLK=m boots "
                     "with the initramfs that carries its module)")
    raise AgentError("Timeout", f"{what} after {timeout_s:g} s")


@method("wait_disk_gone", name=(p_disk_name, _REQUIRED), timeout_s=(p_timeout, 10.0))
def m_wait_disk_gone(agent, name, timeout_s):
    block = os.path.join(agent.sys, "block", name)
    cls = os.path.join(agent.sys, "class", CHARDEV_CLASS, name + "c0")
    node = os.path.join(agent.dev, name + "c0")

    def probe():
        if os.path.lexists(block) or os.path.lexists(cls):
            return None
        # devtmpfs removes its own nodes; a node this agent made is ours to drop.
        if node in agent._made_nodes and os.path.lexists(node):
            os.unlink(node)
            agent._made_nodes.discard(node)
        return None if os.path.lexists(node) else True

    if _wait_until(timeout_s, probe) is None:
        left = [p for p in (block, cls, node) if os.path.lexists(p)]
        raise AgentError("Timeout",
                         f"{name} still present after {timeout_s:g} s: {', '.join(left)}")
    return {"name": name}


@method("sysfs", name=(p_disk_name, _REQUIRED), paths=(p_str_list, _REQUIRED))
def m_sysfs(agent, name, paths):
    base = os.path.join(agent.sys, "block", name)
    if not os.path.isdir(base):
        raise AgentError("NoSuchDisk", f"no disk {name!r} in /sys/block")
    for rel in paths:
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts or "\0" in rel:
            raise _bad_params(f"paths must be relative to /sys/block/{name}/: {rel!r}")
    return {rel: _read_text(os.path.join(base, rel)) for rel in paths}


def _engine_result(returncode, stdout, stderr):
    """The ``engine`` method's result from a finished engine's exit code and output."""
    stdout, stderr = _decode(stdout), _decode(stderr)
    if not stdout.strip() and returncode != 0:
        raise AgentError(
            "EngineFailed",
            f"vblk-engine exited {returncode}: {stderr.strip() or '(no stderr)'}",
            {"exit_code": returncode, "stderr": stderr})
    try:
        result = json.loads(stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise AgentError(
            "EngineOutput",
            f"vblk-engine (exit {returncode}) printed no JSON object: {stdout[:200]!r}",
            {"exit_code": returncode, "stdout": stdout, "stderr": stderr})
    result["exit_code"] = returncode
    result["stderr"] = stderr
    return result


def _no_engine(path, e):
    """``NoEngine``: missing, not executable, or not loadable (ENOEXEC: an i386 binary on a
    kernel without IA32 emulation)."""
    return AgentError("NoEngine", f"cannot run {path}: {e}",
                      {"path": path, "errno": e.errno,
                       "errno_name": errno.errorcode.get(e.errno or 0, "")})


@method("engine", args=(p_str_list, _REQUIRED), timeout_s=(p_timeout, 120.0),
        engine=(p_engine_name, "vblk-engine"))
def m_engine(agent, args, timeout_s, engine):
    import subprocess

    path = agent.engine_binary(engine)
    argv = [path] + args
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout_s)
    except OSError as e:
        raise _no_engine(path, e) from None
    except ValueError as e:  # e.g. an embedded NUL in an argument
        raise _bad_params(f"args: {e}") from None
    except subprocess.TimeoutExpired:
        raise AgentError("Timeout", f"vblk-engine did not finish in {timeout_s:g} s") from None
    return _engine_result(proc.returncode, proc.stdout, proc.stderr)


# ---- background engine jobs ---------------------------------------------------
#
# The agent serves one request at a time, so a job that must run while the
# host does something else (hot-unplug with commands in flight) is started
# with ``spawn`` and collected with ``wait_job``.  Its output goes to
# anonymous temporary files, never to pipes: nothing can block the engine.

JOB_SIGNALS = ("INT", "TERM", "USR1", "KILL", "STOP", "CONT")


class Job:
    def __init__(self, job_id, proc, out, err):
        self.id, self.proc, self.out, self.err = job_id, proc, out, err

    def collect(self):
        """Output of the finished job; closes its files."""
        try:
            self.out.seek(0)
            self.err.seek(0)
            return self.out.read(), self.err.read()
        finally:
            self.out.close()
            self.err.close()


def p_job_signal(name, value):
    p_str(name, value)
    if value not in JOB_SIGNALS:
        raise _bad_params(f"{name} must be one of {', '.join(JOB_SIGNALS)}")
    return value


def _job(agent, job_id):
    job = agent._jobs.get(job_id)
    if job is None:
        raise AgentError("NoSuchJob", f"no job {job_id} (finished jobs are forgotten once waited for)")
    return job


@method("spawn", args=(p_str_list, _REQUIRED), progress_ms=(p_uint, None),
        engine=(p_engine_name, "vblk-engine"))
def m_spawn(agent, args, progress_ms, engine):
    import subprocess
    import tempfile

    if progress_ms is not None and not 10 <= progress_ms <= 60000:
        raise _bad_params("progress_ms must be 10..60000")
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    progress = _Progress(args, progress_ms)
    path = agent.engine_binary(engine)
    try:
        proc = subprocess.Popen([path] + progress.args, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, pass_fds=progress.pass_fds)
    except OSError as e:
        out.close()
        err.close()
        progress.close()
        raise _no_engine(path, e) from None
    except ValueError as e:
        out.close()
        err.close()
        progress.close()
        raise _bad_params(f"args: {e}") from None
    job_id = agent._next_job
    agent._next_job += 1
    agent._jobs[job_id] = Job(job_id, proc, out, err)
    progress.forward(agent, job_id)
    return {"job": job_id, "pid": proc.pid}


class _Progress:
    """The engine's progress pipe for one spawned job (or nothing).

    The engine writes JSON lines (``--progress-fd``); a thread turns each into
    ``{"event": "progress", "job": J, ...}`` to the host until the engine exits.
    The engine never blocks on it: its end is non-blocking and drops lines.
    """

    def __init__(self, args, progress_ms):
        self.args, self.pass_fds, self.rfd, self.wfd = list(args), (), None, None
        if progress_ms is None:
            return
        self.rfd, self.wfd = os.pipe()
        self.pass_fds = (self.wfd,)
        self.args += ["--progress-fd", str(self.wfd), "--progress-ms", str(progress_ms)]

    def close(self):
        for fd in (self.rfd, self.wfd):
            if fd is not None:
                os.close(fd)
        self.rfd = self.wfd = None

    def forward(self, agent, job_id):
        if self.rfd is None:
            return
        import threading

        os.close(self.wfd)  # the engine holds the only write end: EOF when it exits
        self.wfd = None
        rfd, self.rfd = self.rfd, None
        threading.Thread(target=_forward_progress, args=(agent, job_id, rfd), daemon=True).start()


def _forward_progress(agent, job_id, rfd):
    buf = b""
    try:
        while True:
            chunk = os.read(rfd, READ_CHUNK)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    fields = json.loads(line)
                except ValueError:
                    fields = None
                if not isinstance(fields, dict):
                    # An engine bug: say so (host: AgentClient.warnings) instead of dropping it.
                    text = line[:200].decode("utf-8", "replace")
                    _log(f"job {job_id}: progress line is not a JSON object: {text!r}")
                    if agent.emit is not None:
                        agent.emit({"event": "warning", "job": job_id,
                                    "message": f"job {job_id}: engine progress line is not a JSON object: {text!r}"})
                    continue
                if agent.emit is not None:
                    agent.emit({**fields, "event": "progress", "job": job_id})
    except OSError as e:
        _log(f"job {job_id}: progress pipe: {e}")
    finally:
        os.close(rfd)


@method("wait_job", job=(p_uint, _REQUIRED), timeout_s=(p_timeout, 120.0))
def m_wait_job(agent, job, timeout_s):
    import subprocess

    j = _job(agent, job)
    try:
        j.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AgentError("Timeout", f"job {job} (pid {j.proc.pid}) still running after "
                                    f"{timeout_s:g} s") from None
    del agent._jobs[job]
    stdout, stderr = j.collect()
    return _engine_result(j.proc.returncode, stdout, stderr)


@method("signal_job", job=(p_uint, _REQUIRED), signal=(p_job_signal, _REQUIRED))
def m_signal_job(agent, job, signal):
    import signal as sig

    j = _job(agent, job)
    running = j.proc.poll() is None
    if running:
        j.proc.send_signal(getattr(sig, "SIG" + signal))
    return {"job": job, "running": running}


@method("exec", argv=(p_str_list, None), cmd=(p_str, None), timeout_s=(p_timeout, 60.0),
        stdin=(p_str, None))
def m_exec(agent, argv, cmd, timeout_s, stdin):
    import subprocess

    if (argv is None) == (cmd is None):
        raise _bad_params("give exactly one of argv or cmd")
    if argv is not None and not argv:
        raise _bad_params("argv must not be empty")
    run_argv = argv if argv is not None else ["/bin/sh", "-c", cmd]
    try:
        proc = subprocess.run(
            run_argv, capture_output=True, timeout=timeout_s,
            input=stdin.encode() if stdin is not None else None,
            stdin=subprocess.DEVNULL if stdin is None else None)
    except subprocess.TimeoutExpired:
        raise AgentError("Timeout", f"{run_argv[0]} did not finish in {timeout_s:g} s") from None
    except FileNotFoundError as e:  # same codes a shell would give
        return {"rc": 127, "stdout": "", "stderr": str(e)}
    except PermissionError as e:
        return {"rc": 126, "stdout": "", "stderr": str(e)}
    except ValueError as e:  # e.g. an embedded NUL in an argument
        raise _bad_params(f"argv/cmd: {e}") from None
    return {"rc": proc.returncode, "stdout": _decode(proc.stdout),
            "stderr": _decode(proc.stderr)}


@method("read_file", path=(p_path, _REQUIRED), max_bytes=(p_uint, 1 << 20))
def m_read_file(agent, path, max_bytes):
    with open(path, "rb") as f:
        data = f.read(max_bytes)
    return {"data": data.decode("utf-8", "replace")}


@method("write_file", path=(p_path, _REQUIRED), data=(p_str, _REQUIRED))
def m_write_file(agent, path, data):
    # One write() call: sysfs attributes take the whole value in one store.
    raw = data.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        written = os.write(fd, raw)
    finally:
        os.close(fd)
    if written != len(raw):
        raise AgentError("OSError", f"short write to {path}: {written} of {len(raw)} bytes",
                         {"errno": errno.EIO, "errno_name": "EIO"})
    return {}


@method("dmesg", since_seq=(p_uint, 0))
def m_dmesg(agent, since_seq):
    # Keep /dev/kmsg open between calls: re-reading the whole log each time
    # is thousands of syscalls, slow under emulation.
    if agent._kmsg_fd is None or since_seq < agent._kmsg_next:
        agent._kmsg_open()
    records = []
    for line in agent._kmsg_read_all():
        rec = _parse_kmsg(line)
        if rec is None:
            continue
        agent._kmsg_next = rec["seq"] + 1
        if rec["seq"] >= since_seq:
            records.append(rec)
    return {"records": records, "next_seq": max(agent._kmsg_next, since_seq)}


@method("read_binary", path=(p_path, _REQUIRED), max_bytes=(p_uint, 16 << 20))
def m_read_binary(agent, path, max_bytes):
    # Binary-safe read_file (e.g. a gcov .gcda from debugfs, whose st_size is 0,
    # so read to EOF): the bytes as base64, and their count.
    chunks, size = [], 0
    with open(path, "rb") as f:
        while size < max_bytes:
            chunk = f.read(min(1 << 16, max_bytes - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return {"data_b64": base64.b64encode(b"".join(chunks)).decode("ascii"), "size": size}


@method("poweroff")
def m_poweroff(agent):
    agent.after_reply = agent.power_off
    return {}


def _power_off_now():
    """Sync and power the guest off; only returns if every way failed."""
    import subprocess

    os.sync()
    for argv in (["poweroff", "-f"], ["busybox", "poweroff", "-f"]):
        try:
            subprocess.run(argv, timeout=10)
        except (OSError, subprocess.SubprocessError) as e:
            _log(f"{' '.join(argv)} failed: {e}")
        time.sleep(1)  # poweroff -f does not return when it works
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
    except OSError as e:
        _log(f"sysrq poweroff failed: {e}")


# ---- transport -------------------------------------------------------------


class Channel:
    """A byte stream split into lines, over raw fds (no Python buffering).

    The virtio-serial port may hand over partial lines, and reads after the
    host closes its end return EOF until it reconnects, so ``reconnect``
    makes EOF a pause instead of the end.
    """

    OVERSIZE = object()

    def __init__(self, rfd, wfd, reconnect):
        self.rfd, self.wfd, self.reconnect = rfd, wfd, reconnect
        self.buf = b""
        self.down = False
        import threading

        self.send_lock = threading.Lock()

    def lines(self):
        """Yield complete lines (bytes), or OVERSIZE for a runaway line."""
        while True:
            try:
                chunk = os.read(self.rfd, READ_CHUNK)
            except InterruptedError:
                continue
            except OSError as e:  # e.g. EIO on a pty whose master closed
                if not self.reconnect:
                    raise
                if not self.down:
                    _log(f"read error on port, retrying: {e}")
                chunk = b""
            if not chunk:
                if not self.reconnect:
                    return
                self.buf = b""  # a half line from a vanished host is garbage
                self.down = True
                time.sleep(0.1)
                continue
            self.down = False
            self.buf += chunk
            if b"\n" in chunk:
                *complete, self.buf = self.buf.split(b"\n")
                yield from complete
            elif len(self.buf) > MAX_LINE_BYTES:
                self.buf = b""
                yield self.OVERSIZE

    def send(self, obj):
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        with self.send_lock:  # replies and progress events must not interleave
            while data:
                n = os.write(self.wfd, data)
                data = data[n:]


def _send_reply(chan, reply):
    """Send ``reply``; a result JSON cannot encode becomes InternalError."""
    try:
        chan.send(reply)
        return
    except (TypeError, ValueError) as e:
        reply = _error_reply(reply.get("id"),
                             AgentError("InternalError", f"unencodable result: {e}"))
    except OSError as e:
        _log(f"cannot send reply: {e}")
        return
    try:
        chan.send(reply)
    except OSError as e:
        _log(f"cannot send reply: {e}")


def _send_event(chan, event):
    try:
        chan.send(event)
    except (OSError, TypeError, ValueError) as e:
        _log(f"cannot send event: {e}")


def serve(agent, chan):
    """Answer requests until EOF (stdio) or poweroff."""
    agent.emit = lambda event: _send_event(chan, event)
    try:
        chan.send({"event": "ready", "boot_ns": _boot_ns()})
    except OSError as e:
        _log(f"cannot send ready event: {e}")
    for line in chan.lines():
        if line is Channel.OVERSIZE:
            reply = _error_reply(None, AgentError(
                "BadRequest", f"line longer than {MAX_LINE_BYTES} bytes dropped"))
        elif not line.strip():
            continue  # blank lines let the host resynchronise cheaply
        else:
            reply = agent.handle_line(line.rstrip(b"\r"))
        _send_reply(chan, reply)
        action, agent.after_reply = agent.after_reply, None
        if action is not None:
            action()
        if agent.stop:
            return


def find_port(sysfs_root, dev_root, timeout_s):
    """Path of the ``org.vblk-ci.agent`` port node, waiting for it to appear.

    Without udev there is no /dev/virtio-ports/<name> link, so the port is
    found by its sysfs ``name`` attribute; its node is made if missing.
    """
    cls = os.path.join(sysfs_root, "sys", "class", "virtio-ports")
    dev = os.path.join(dev_root, "dev")

    def probe():
        try:
            ports = sorted(os.listdir(cls))
        except FileNotFoundError:
            return None
        for port in ports:
            if _read_text(os.path.join(cls, port, "name")) != PORT_NAME:
                continue
            node = os.path.join(dev, port)
            devno = _parse_devno(_read_text(os.path.join(cls, port, "dev")))
            if not os.path.exists(node) and devno is not None:
                os.mknod(node, stat.S_IFCHR | 0o600, devno)
            return node
        return None

    return _wait_until(timeout_s, probe)


def parse_args(argv):
    """Tiny option parser: argparse costs a noticeable start-up under TCG."""
    opts = {"port": None, "stdio": False, "engine": DEFAULT_ENGINE, "sysfs_root": "/",
            "dev_root": "/", "discover_timeout": 60.0, "no_poweroff": False}
    with_value = {"--port": "port", "--engine": "engine", "--sysfs-root": "sysfs_root",
                  "--dev-root": "dev_root", "--discover-timeout": "discover_timeout"}
    flags = {"--stdio": "stdio", "--no-poweroff": "no_poweroff"}
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if key in with_value:
            if not eq:
                if not args:
                    raise ValueError(f"{arg} needs a value")
                value = args.pop(0)
            opts[with_value[key]] = value
        elif arg in flags:
            opts[flags[arg]] = True
        elif arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        else:
            raise ValueError(f"unknown argument {arg!r}")
    if opts["port"] and opts["stdio"]:
        raise ValueError("--port and --stdio exclude each other")
    try:
        opts["discover_timeout"] = float(opts["discover_timeout"])
    except ValueError:
        raise ValueError("--discover-timeout needs a number of seconds") from None
    return opts


def main(argv=None):
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        sys.stderr.write(f"vblk-agent: {e}\n{USAGE}\n")
        return 2
    agent = Agent(opts["sysfs_root"], opts["dev_root"], opts["engine"],
                  allow_poweroff=not opts["no_poweroff"])
    if opts["stdio"]:
        serve(agent, Channel(0, 1, reconnect=False))
        return 0
    port = opts["port"] or find_port(opts["sysfs_root"], opts["dev_root"],
                                     opts["discover_timeout"])
    if port is None:
        _log(f"no virtio-serial port named {PORT_NAME} after "
             f"{opts['discover_timeout']:g} s")
        return 1
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        _log(f"cannot open {port}: {e}")
        return 1
    is_port = stat.S_ISCHR(os.fstat(fd).st_mode)
    serve(agent, Channel(fd, fd, reconnect=is_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
