"""A fuzz program: one ring, one open mode, one disk, a list of uring_cmd steps.

``Program.text()`` is what the guest executor (``vblk-engine --program``) reads; the
format is in guest-agent/PROTOCOL.md ("Fuzz programs"). ``parse()`` reads it back,
so a program file written by a campaign is what ``vblk-ci fuzz --replay`` runs.
Host-only metadata (disk, seed) rides in ``# key value`` comment lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UsageError

# VIRTIO_BLK_T_* and the cmd_ops of the uapi.
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
T_SECURE_ERASE = 14
# v3 uapi: _IOWR(0xB9, 0x00/0x01, struct virtblk_uring_cmd) (v2: the plain integers 1 and 2)
CMD_IO, CMD_IO_VEC = 0xC020B900, 0xC020B901
TYPE_NAMES = {T_IN: "read", T_OUT: "write", T_FLUSH: "flush", T_GET_ID: "get-id", T_DISCARD: "discard",
              T_WRITE_ZEROES: "write-zeroes"}
WRITE_TYPES = frozenset({T_OUT, T_FLUSH, T_DISCARD, T_WRITE_ZEROES})
BUF_KINDS = ("aligned", "misaligned", "unmapped", "null", "fixed", "fixed-oob")
MODES = ("rw", "ro", "wo")
ABIS = ("x86_64", "i386")  # which executor runs the program: vblk-engine or vblk-engine32 (compat syscalls)
MAX_CHAIN = 8  # the executor's longest linked chain
STEP_BYTES = 256 << 10  # the executor's data slot per step
RANGE_BYTES = 16  # struct virtio_blk_discard_write_zeroes
HEADER = "# vblk-ci fuzz program"


@dataclass(frozen=True)
class Step:
    """One uring_cmd. ``data_len`` None: the executor computes it (bytes, iovec count or
    16 x ranges); ``iov`` non-empty: the buffer is described by iovecs of these lengths."""

    cmd_op: int = CMD_IO
    type: int = T_IN
    ioprio: int = 0
    sector: int = 0
    len: int = 0
    data_len: int | None = None
    flag: int = 0
    buf: str = "aligned"
    iov: tuple[int, ...] = ()
    ranges: tuple[tuple[int, int, int], ...] = ()  # (sector, num_sectors, flags)
    seed: int = 0
    link: bool = False
    async_: bool = False

    @property
    def name(self) -> str:
        """The op as a class name: read, write, ..., or type-N for any other type."""
        return TYPE_NAMES.get(self.type, f"type-{self.type}")

    @property
    def cmd_data_len(self) -> int:
        """cmd->data_len as the kernel sees it."""
        if self.data_len is not None:
            return self.data_len
        if self.iov:
            return len(self.iov)
        if self.ranges:
            return RANGE_BYTES * len(self.ranges)
        return self.len

    def text(self) -> str:
        parts = [f"op={self.cmd_op}", f"type={self.type}"]
        if self.ioprio:
            parts.append(f"ioprio={self.ioprio:#x}")
        parts.append(f"sector={self.sector}")
        if not self.iov and not self.ranges:
            parts.append(f"len={self.len}")
        if self.data_len is not None:
            parts.append(f"data_len={self.data_len}")
        if self.flag:
            parts.append(f"flag={self.flag:#x}")
        parts.append(f"buf={self.buf}")
        if self.iov:
            parts.append("iov=" + _iov_text(self.iov))
        if self.ranges:
            parts.append("ranges=" + ",".join(f"{s}:{n}:{f}" for s, n, f in self.ranges))
        if self.seed:
            parts.append(f"seed={self.seed}")
        if self.link:
            parts.append("link=1")
        if self.async_:
            parts.append("async=1")
        return "step " + " ".join(parts)


def _iov_text(lens: tuple[int, ...]) -> str:
    out: list[str] = []
    i = 0
    while i < len(lens):
        j = i
        while j + 1 < len(lens) and lens[j + 1] == lens[i]:
            j += 1
        out.append(f"{lens[i]}x{j - i + 1}" if j > i else str(lens[i]))
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class Program:
    disk: str
    steps: tuple[Step, ...] = ()
    sqe: int = 128
    iopoll: bool = False
    sqpoll: bool = False
    scribble: bool = False  # the executor overwrites each SQE once the kernel has consumed it
    mode: str = "rw"
    seed: int | None = None  # the generator seed it came from, if any
    user: int | None = None  # run as this uid (= gid, no groups, no capabilities); None: root
    abi: str = "x86_64"  # x86_64 (vblk-engine) or i386 (vblk-engine32, a 32-bit caller)
    meta: dict = field(default_factory=dict, compare=False)

    def with_steps(self, steps) -> "Program":
        steps = tuple(steps)
        if steps:  # a dangling link on the last step would join nothing
            steps = steps[:-1] + (replace(steps[-1], link=False),)
        return replace(self, steps=steps)

    def chains(self) -> list[list[int]]:
        """Step indexes grouped as the executor submits them (a link joins the next step)."""
        chains: list[list[int]] = []
        cur: list[int] = []
        for i, s in enumerate(self.steps):
            cur.append(i)
            if not s.link or len(cur) == MAX_CHAIN:
                chains.append(cur)
                cur = []
        if cur:
            chains.append(cur)
        return chains

    def text(self) -> str:
        lines = [HEADER, f"# disk {self.disk}"]
        if self.seed is not None:
            lines.append(f"# seed {self.seed}")
        if self.abi != "x86_64":
            lines.append(f"# abi {self.abi}")
        if self.user is not None:  # before the ring and the fd: both belong to the user
            lines.append(f"user uid={self.user} gid={self.user}")
        scribble = " scribble=1" if self.scribble else ""
        lines.append(f"ring sqe={self.sqe} iopoll={int(self.iopoll)} sqpoll={int(self.sqpoll)}{scribble} entries=16")
        lines.append(f"open mode={self.mode}")
        chain = 0
        for s in self.steps:
            # the executor refuses chains over MAX_CHAIN: cut them here the same way
            chain = chain + 1 if s.link else 0
            if chain == MAX_CHAIN:
                s, chain = replace(s, link=False), 0
            lines.append(s.text())
        return "\n".join(lines) + "\n"


def _num(text: str, where: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{where}: not a number: {text!r}") from None


def _fields(words: list[str], where: str) -> dict[str, str]:
    out = {}
    for w in words:
        if "=" not in w:
            raise UsageError(f"{where}: expected KEY=VALUE, got {w!r}")
        k, v = w.split("=", 1)
        out[k] = v
    return out


def _parse_iov(text: str, where: str) -> tuple[int, ...]:
    lens: list[int] = []
    for tok in text.split(","):
        length, _, count = tok.partition("x")
        lens += [_num(length, where)] * (_num(count, where) if count else 1)
    return tuple(lens)


def _parse_step(words: list[str], where: str) -> Step:
    f = _fields(words, where)
    kw: dict = {}
    ints = {"op": "cmd_op", "type": "type", "ioprio": "ioprio", "sector": "sector", "len": "len",
            "data_len": "data_len", "flag": "flag", "seed": "seed"}
    for key, value in f.items():
        if key in ints:
            kw[ints[key]] = _num(value, where)
        elif key == "buf":
            if value not in BUF_KINDS:
                raise UsageError(f"{where}: unknown buffer kind {value!r}")
            kw["buf"] = value
        elif key == "iov":
            kw["iov"] = _parse_iov(value, where)
        elif key == "ranges":
            kw["ranges"] = tuple(tuple(_num(x, where) for x in r.split(":")) for r in value.split(","))
            if any(len(r) != 3 for r in kw["ranges"]):
                raise UsageError(f"{where}: a range is SECTOR:NUM:FLAGS")
        elif key in ("link", "async"):
            kw["async_" if key == "async" else key] = _num(value, where) != 0
        else:
            raise UsageError(f"{where}: unknown step field {key!r}")
    return Step(**kw)


def parse(text: str, source: str = "program") -> Program:
    """A program file back into a Program (one ring and one open line, as written)."""
    meta: dict[str, str] = {}
    ring: dict[str, str] = {}
    mode = "rw"
    user: int | None = None
    steps: list[Step] = []
    for n, raw in enumerate(text.splitlines(), 1):
        where = f"{source}:{n}"
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(" ")
            if key in ("disk", "seed", "abi"):
                meta[key] = value.strip()
            continue
        word, *rest = line.split()
        if word == "ring":
            ring = _fields(rest, where)
        elif word == "open":
            mode = _fields(rest, where).get("mode", "rw")
            if mode not in MODES:
                raise UsageError(f"{where}: open mode must be one of {', '.join(MODES)}")
        elif word == "step":
            steps.append(_parse_step(rest, where))
        elif word == "user":
            ids = _fields(rest, where)
            if set(ids) != {"uid", "gid"} or ids["uid"] != ids["gid"]:
                raise UsageError(f"{where}: a user line is 'user uid=N gid=N' (the same number)")
            user = _num(ids["uid"], where)
        else:
            raise UsageError(f"{where}: unknown directive {word!r}")
    if meta.get("abi", "x86_64") not in ABIS:
        raise UsageError(f"{source}: # abi must be one of {', '.join(ABIS)}")
    if "disk" not in meta:
        raise UsageError(f"{source}: no '# disk NAME' line (which disk the program runs on)")
    return Program(
        disk=meta["disk"], steps=tuple(steps), sqe=_num(ring.get("sqe", "128"), source),
        iopoll=ring.get("iopoll", "0") != "0", sqpoll=ring.get("sqpoll", "0") != "0",
        scribble=ring.get("scribble", "0") != "0", mode=mode,
        seed=_num(meta["seed"], source) if "seed" in meta else None,
        user=user, abi=meta.get("abi", "x86_64"),
    )
