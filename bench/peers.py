"""The peers tailmail is measured against: rsyslog and syslog-ng, on the same input, same filter.

Both come from Debian, unpacked by the bench itself and run from a folder, never installed as
packages: they conflict with each other, and an installed package would start a system service
that listens on /dev/log. `install` fetches each with `apt-get download`, unpacks it with
`dpkg -x` together with the shared-library packages it needs that the machine lacks, and checks
with `ldd` that nothing is missing. `run_peer` starts one in the foreground with its own config
(bench/peers/*.conf) and work folder, times it until its output is complete, and stops it.

The filter, for every peer and for tailmail: a JSON object whose `level` is the string "error"
or "warning" and whose `event` is a string starting with "login.". Each peer appends the
original line of every selected event; `check_output` compares that with the expected lines.
"""

from __future__ import annotations

import collections
import filecmp
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

try:
    from bench import procstat
except ImportError:  # run as a script: `python bench/run.py` puts bench/ itself on sys.path
    import procstat  # type: ignore[no-redef, import-not-found, unused-ignore]

PEER_NAMES = ("rsyslog", "syslog-ng", "syslog-ng-tuned")
PACKAGES = {"rsyslog": "rsyslog", "syslog-ng": "syslog-ng-core"}
CONFIGS = Path(__file__).resolve().parent / "peers"
# Every peer must pass lines of up to 64 KiB whole; twice that leaves room to spare.
MAX_MESSAGE_BYTES = 128 * 1024
STALL_SECONDS = 5.0  # output that stops growing this long before it is complete is final
STOP_SECONDS = 10.0  # SIGTERM, then SIGKILL


class InstallError(RuntimeError):
    """A peer could not be fetched, unpacked or made runnable."""


@dataclass(frozen=True, slots=True)
class Peer:
    """One unpacked peer: what to run, and how."""

    package: str
    version: str  # the Debian version of `package`, e.g. "8.2302.0-1+deb12u2"
    binary: Path
    module_dir: Path
    library_path: str  # LD_LIBRARY_PATH: the unpacked library folders
    packages: tuple[str, ...]  # every package unpacked, as "name=version"

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": self.library_path}


@dataclass(frozen=True, slots=True)
class Peers:
    rsyslog: Peer
    syslog_ng: Peer

    def get(self, name: str) -> Peer:
        """The unpacked peer that runs the config `name` (one of PEER_NAMES)."""
        if name not in PEER_NAMES:
            raise ValueError(f"unknown peer {name!r}: expected one of {', '.join(PEER_NAMES)}")
        return self.rsyslog if name == "rsyslog" else self.syslog_ng


@dataclass(frozen=True, slots=True)
class PeerRun:
    name: str
    seconds: float  # from process start until the output was complete (or stopped growing)
    cpu_seconds: float  # user + system, all threads, at that moment
    peak_rss: int  # bytes (VmHWM) at that moment
    output: Path


# --- install ------------------------------------------------------------------------------


def install(cache: Path) -> Peers:
    """Fetch and unpack both peers under `cache` (reused when already there)."""
    cache = cache.resolve()
    return Peers(
        rsyslog=_install_peer(cache, "rsyslog"), syslog_ng=_install_peer(cache, "syslog-ng")
    )


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)


def _install_peer(cache: Path, name: str) -> Peer:
    folder = cache / name
    manifest = folder / "installed.json"
    if manifest.exists() and (peer := _load_manifest(folder, manifest)).binary.exists():
        return peer
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    partial = folder / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    unpacked = _unpack_with_libraries(PACKAGES[name], debs, partial)
    root = folder / "root"
    shutil.rmtree(root, ignore_errors=True)
    # Unpacked under another name and renamed when complete: an interrupted install is
    # redone, never half reused.
    partial.rename(root)
    peer = _describe(root, name, unpacked)
    _check_libraries(peer)
    manifest.write_text(json.dumps(_to_manifest(peer, folder), indent=2) + "\n")
    return peer


def _unpack_with_libraries(package: str, debs: Path, root: Path) -> dict[str, str]:
    """Unpack `package` and, level by level, the library packages it depends on that are not
    installed on this machine; return {package: version} of everything unpacked.

    Only library packages (named lib*, as Debian names them) are followed: the others a peer
    depends on are system tools (sysvinit-utils, lsb-base) it does not need to run from a
    folder. `_check_libraries` then proves with ldd that nothing is missing.
    """
    unpacked: dict[str, str] = {}
    wanted = [package]
    while wanted:
        following: list[str] = []
        for name, deb in _download(wanted, debs).items():
            _checked(["dpkg-deb", "-x", str(deb), str(root)])
            unpacked[name] = _field(deb, "Version")
            for alternatives in _depends(deb):
                known = set(unpacked) | set(following) | set(wanted)
                if any(alt in known for alt in alternatives) or _installed(alternatives):
                    continue
                if alternatives[0].startswith("lib"):
                    following.append(alternatives[0])
        wanted = following
    return unpacked


def _download(packages: list[str], debs: Path) -> dict[str, Path]:
    """The .deb of each package, from `debs` or fetched into it with `apt-get download`."""
    missing = [p for p in packages if _cached_deb(p, debs) is None]
    if missing:
        # As root, apt downloads as the _apt user unless told otherwise, and warns that it
        # cannot write into our folder.
        command = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *missing]
        result = _run(command, cwd=debs)
        if result.returncode != 0:
            # Most likely no package lists yet (a fresh machine): fetch them once, try again.
            update = _run(["apt-get", "update"])
            result = _run(command, cwd=debs)
            if result.returncode != 0:
                raise InstallError(
                    f"`{' '.join(command)}` failed in {debs}: {_tail(result.stderr)}"
                    + (
                        f"; `apt-get update` also said: {_tail(update.stderr)}"
                        if update.returncode
                        else ""
                    )
                )
    found = {p: _cached_deb(p, debs) for p in packages}
    for p, deb in found.items():
        if deb is None:
            raise InstallError(
                f"apt-get download said it fetched {p} but no {p}_*.deb is in {debs}"
            )
    return {p: deb for p, deb in found.items() if deb is not None}


def _cached_deb(package: str, debs: Path) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _checked(args: list[str]) -> str:
    result = _run(args)
    if result.returncode != 0:
        raise InstallError(f"`{' '.join(args)}` failed: {_tail(result.stderr)}")
    return result.stdout


def _field(deb: Path, field: str) -> str:
    return _checked(["dpkg-deb", "-f", str(deb), field]).strip()


def _depends(deb: Path) -> list[list[str]]:
    """Depends and Pre-Depends of a .deb, as groups of alternatives, versions and arch dropped:
    the versions on a Debian machine of the same release satisfy them."""
    groups = []
    for field in ("Pre-Depends", "Depends"):
        text = _field(deb, field)
        for group in filter(None, (g.strip() for g in text.split(","))):
            groups.append(
                [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            )
    return groups


def _installed(packages: Iterable[str]) -> bool:
    """Whether any of `packages` is installed on this machine (dpkg says "ii")."""
    result = _run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n", *packages])
    return any(len(s) > 1 and s[1] == "i" for s in result.stdout.splitlines())


def _describe(root: Path, name: str, unpacked: dict[str, str]) -> Peer:
    package = PACKAGES[name]
    if name == "rsyslog":
        binary, module_file = root / "usr/sbin/rsyslogd", "usr/lib/*/rsyslog/imfile.so"
    else:
        binary, module_file = root / "usr/sbin/syslog-ng", "usr/lib/syslog-ng/*/libaffile.so"
    modules = sorted(root.glob(module_file))
    if not binary.exists() or not modules:
        raise InstallError(
            f"{package} unpacked into {root} has no {binary.name} or no {module_file}"
        )
    module_dir = modules[-1].parent
    # Versioned shared libraries (libfoo.so.1) live in the folders the loader must search;
    # the peers' modules (imfile.so, libaffile.so) carry no version and are loaded by path.
    lib_dirs = sorted({p.parent for p in root.rglob("lib*.so.*")} - {module_dir})
    return Peer(
        package=package,
        version=unpacked[package],
        binary=binary,
        module_dir=module_dir,
        library_path=":".join(str(d) for d in lib_dirs),
        packages=tuple(f"{p}={v}" for p, v in sorted(unpacked.items())),
    )


def _check_libraries(peer: Peer) -> None:
    """ldd the binary and every module: each library must resolve, from the machine or the
    unpacked folders."""
    files = [peer.binary, *sorted(peer.module_dir.glob("*.so"))]
    result = subprocess.run(
        ["ldd", *map(str, files)], capture_output=True, text=True, env=peer.env(), check=False
    )
    missing = sorted(
        {line.split()[0] for line in result.stdout.splitlines() if "not found" in line}
    )
    if missing:
        raise InstallError(
            f"{peer.package} {peer.version} still lacks {', '.join(missing)} after unpacking "
            f"{', '.join(peer.packages)}; `ldd {peer.binary}` with LD_LIBRARY_PATH="
            f"{peer.library_path} shows which file needs it"
        )


def _to_manifest(peer: Peer, folder: Path) -> dict[str, object]:
    return {
        "package": peer.package,
        "version": peer.version,
        "binary": str(peer.binary.relative_to(folder)),
        "module_dir": str(peer.module_dir.relative_to(folder)),
        "library_path": [
            str(Path(d).relative_to(folder)) for d in peer.library_path.split(":") if d
        ],
        "packages": list(peer.packages),
    }


def _load_manifest(folder: Path, manifest: Path) -> Peer:
    data = json.loads(manifest.read_text())
    return Peer(
        package=data["package"],
        version=data["version"],
        binary=folder / data["binary"],
        module_dir=folder / data["module_dir"],
        library_path=":".join(str(folder / d) for d in data["library_path"]),
        packages=tuple(data["packages"]),
    )


def _complaint(log: Path) -> str:
    """The lines of a peer's log that say what went wrong (syslog-ng ends with boilerplate)."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return " / ".join(errors[:3]) or _tail("\n".join(lines))


def _tail(text: str, lines: int = 3) -> str:
    return " / ".join(text.strip().splitlines()[-lines:]) or "(no message)"


# --- run ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Files:
    """Everything one peer run reads or writes, in the caller's work folder."""

    config: Path
    output: Path
    log: Path  # the peer's own stdout and stderr
    state: Path  # pid file, persist/state files, control socket

    @classmethod
    def in_folder(cls, work: Path, name: str) -> _Files:
        return cls(
            config=work / f"{name}.conf",
            output=work / f"{name}.out",
            log=work / f"{name}.log",
            state=work / f"{name}.state",
        )

    def clear(self) -> None:
        """Forget an earlier run: with its state file a peer would resume at the input's end."""
        for path in (self.config, self.output, self.log):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)


def run_peer(
    peers: Peers, name: str, input: Path, work: Path, expected_bytes: int, timeout: float = 600
) -> PeerRun:
    """Run peer `name` (one of PEER_NAMES) over `input` from its beginning, until its output
    holds `expected_bytes` (or stops growing for STALL_SECONDS); measure it; stop it."""
    peer = peers.get(name)
    work = work.resolve()
    files = _Files.in_folder(work, name)
    files.clear()
    files.config.write_text(_config(peer, name, input.resolve(), files))
    command = _command(peer, name, files)
    with files.log.open("wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(
            command, env=peer.env(), cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        try:
            done = procstat.wait_for_size(
                files.output, expected_bytes, proc, timeout, STALL_SECONDS
            )
        except ChildProcessError as e:
            raise ChildProcessError(
                f"{name}: {e}; {files.log} says: {_complaint(files.log)}"
            ) from e
        # Read now: the counters vanish with the process.
        cpu, peak = procstat.cpu_seconds(proc.pid), procstat.peak_rss(proc.pid)
    finally:
        procstat.stop(proc, STOP_SECONDS)
    return PeerRun(
        name=name, seconds=done - start, cpu_seconds=cpu, peak_rss=peak, output=files.output
    )


def _command(peer: Peer, name: str, files: _Files) -> list[str]:
    if name == "rsyslog":
        return [
            str(peer.binary), "-n", "-f", str(files.config),
            "-i", str(files.state / "rsyslogd.pid"), "-M", str(peer.module_dir),
        ]  # fmt: skip
    control = files.state / "syslog-ng.ctl"
    if len(bytes(control)) >= 108:  # sun_path: longer, and syslog-ng cannot open its socket
        raise ValueError(f"work folder path too long for syslog-ng's control socket: {control}")
    return [
        str(peer.binary), "--foreground", "--stderr", "--no-caps",
        "--cfgfile", str(files.config),
        "--persist-file", str(files.state / "syslog-ng.persist"),
        "--pidfile", str(files.state / "syslog-ng.pid"),
        "--control", str(control),
        "--module-path", str(peer.module_dir),
    ]  # fmt: skip


def _config(peer: Peer, name: str, input: Path, files: _Files) -> str:
    values = {
        "input": input,
        "output": files.output,
        "state": files.state,
        "max_message": MAX_MESSAGE_BYTES,
        # syslog-ng wants the version its config is written for: "3.38" for 3.38.1-5+deb12u1.
        "version": ".".join(peer.version.split(".")[:2]),
    }
    template = CONFIGS / f"{name}.conf"
    text = template.read_text()
    for key, value in values.items():
        if re.search(r'["\\\n]', str(value)):
            raise ValueError(f"{key} {value} cannot be quoted in a {name} config")
        text = text.replace("{{" + key + "}}", str(value))
    if left := re.search(r"\{\{\w+\}\}", text):
        raise ValueError(f"{template} has a placeholder this code does not fill: {left[0]}")
    return text


# --- check --------------------------------------------------------------------------------


def check_output(output: Path, expected: Path) -> str:
    """Compare a peer's output with the expected selection, line for line.

    Returns "ok" for the same bytes, "reordered" for the same lines in another order, else what
    differs, e.g. "missing 120, extra 3 of 100,000" (lines of `expected` absent from `output`,
    lines of `output` absent from `expected`, lines expected)."""
    if output.exists() and filecmp.cmp(output, expected, shallow=False):
        return "ok"
    want, got = _lines(expected), _lines(output) if output.exists() else collections.Counter()
    missing, extra = (want - got).total(), (got - want).total()
    if not missing and not extra:
        return "reordered"
    return f"missing {missing:,}, extra {extra:,} of {want.total():,}"


def _lines(path: Path) -> collections.Counter[bytes]:
    # A binary file iterates on b"\n" only, newline kept: a last line without one differs.
    with path.open("rb") as f:
        return collections.Counter(f)
