"""SIP peers for the user agent's tests: sipp scenarios and a Kamailio proxy on loopback, and a raw UDP socket.

sipp and kamailio run as subprocesses on free 127.0.0.1 ports and are always stopped by their PID.
Scenario files in ``tests/sip/`` carry ``@NAME@`` placeholders filled in per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "sip"
PCAP_DIR = Path("/usr/share/sip-tester")
SIPP = shutil.which("sipp")
KAMAILIO = shutil.which("kamailio") or ("/usr/sbin/kamailio" if Path("/usr/sbin/kamailio").exists() else None)
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


def free_udp_port(even: bool = False) -> int:
    """A UDP port free on 127.0.0.1 right now (``even``: with the odd one above free too, for sipp media)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not even:
            return port
        if port % 2 == 0 and port < 65534:
            with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s2:
                s2.bind(("127.0.0.1", port + 1))
                return port
    raise RuntimeError("no free UDP port")


def render(name: str, dest_dir: Path, **values: object) -> Path:
    """Writes scenario ``name`` with its ``@KEY@`` placeholders filled into ``dest_dir``."""
    text = (SCENARIOS / name).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise ValueError(f"unfilled placeholders in {name}: {leftover}")
    path = dest_dir / name
    path.write_text(text)
    return path


@dataclass
class SippResult:
    rc: int
    output: str
    messages: str  # sipp's -trace_msg log (what it sent and received)

    def explain(self) -> str:
        return f"sipp rc={self.rc}\n--- output ---\n{self.output[-3000:]}\n--- messages ---\n{self.messages[-6000:]}"


async def run_sipp(scenario: str, target: str, workdir: Path, *, service: str = "1000", timeout_s: float = 20,
                   **values: object) -> SippResult:
    """Runs one sipp call (``-m 1``) of ``scenario`` against ``target`` (host:port) and waits for it.

    sipp's exit code: 0 when every call succeeded, 1 when one failed; killed after ``timeout_s``."""
    assert SIPP is not None
    local_port = free_udp_port()
    media_port = free_udp_port(even=True)
    path = render(scenario, workdir, **values)
    cmd = [SIPP, target, "-sf", str(path), "-i", "127.0.0.1", "-p", str(local_port), "-m", "1", "-nostdin",
           "-s", service, "-mi", "127.0.0.1", "-mp", str(media_port), "-timeout", f"{int(timeout_s)}s",
           "-timeout_error", "-trace_msg", "-message_file", str(workdir / "messages.log"), "-trace_err",
           "-error_file", str(workdir / "errors.log")]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + 5)
        rc = proc.returncode if proc.returncode is not None else -1
    except TimeoutError:
        out, rc = b"(killed: timeout)", -9
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    messages = ""
    for log_name in ("messages.log", "errors.log"):
        with contextlib.suppress(OSError):
            messages += (workdir / log_name).read_text(errors="replace")
    return SippResult(rc, out.decode(errors="replace"), messages)


@contextlib.asynccontextmanager
async def kamailio_proxy(workdir: Path, bridge_port: int) -> AsyncIterator[int]:
    """A Kamailio proxy on a free loopback port that record-routes and relays every new call to the bridge.

    Yields its port; stops it by PID (SIGTERM, then SIGKILL) however the test ends."""
    assert KAMAILIO is not None
    port = free_udp_port()
    cfg = render("kamailio.cfg", workdir, kamailio_port=port, bridge_port=bridge_port, modules=KAMAILIO_MODULES)
    pidfile = workdir / "kamailio.pid"
    log_path = workdir / "kamailio.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(KAMAILIO, "-f", str(cfg), "-P", str(pidfile), "-DD", "-E",
                                                    "-w", str(workdir), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=log_file, stderr=log_file)
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.setblocking(False)
        try:
            for _ in range(100):  # up when it answers OPTIONS
                probe.sendto(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
                             b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe;rport\r\n"
                             b"From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: probe\r\n"
                             b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", ("127.0.0.1", port))
                await asyncio.sleep(0.05)
                with contextlib.suppress(BlockingIOError):
                    if probe.recv(4096).startswith(b"SIP/2.0"):
                        break
                if proc.returncode is not None:
                    raise RuntimeError("kamailio exited:\n" + log_path.read_text(errors="replace")[-3000:])
            else:
                raise RuntimeError("kamailio did not answer:\n" + log_path.read_text(errors="replace")[-3000:])
        finally:
            probe.close()
        yield port
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()


class UdpPeer:
    """A raw UDP socket on loopback for hand-written (and broken) SIP messages."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    async def recv(self, timeout_s: float = 2.0) -> bytes | None:
        """The next datagram, or None after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout_s)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()
