"""TURN (coturn, as in production) configured in ``channels.webrtc.ice_servers``: the bridge allocates a relay
with its credentials and offers it, and browsers get the servers they may use."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiortc import RTCPeerConnection

from gateway.app import create_app
from media_bridge.clients import BridgeClients
from tests.fakes import FAST_CALL, FakeAsrClient, FakeLlmClient, FakeTtsClient, FakeVadClient
from tests.platform_helpers import isolate
from tests.servers import serve_app, wait_until
from tests.sip_helpers import free_udp_port
from voiceai.config import Settings, load_settings

pytestmark = pytest.mark.integration
TURNSERVER = shutil.which("turnserver")
USER, SECRET = "voiceai", "turn-secret-for-tests"


@pytest.fixture(scope="module")
def turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if TURNSERVER is None:
        pytest.skip("coturn's turnserver is not installed (scripts/setup.sh installs it)")
    port = free_udp_port()
    relay_min = free_udp_port() // 2 * 2
    log = tmp_path_factory.mktemp("coturn") / "turn.log"
    proc = subprocess.Popen(
        [TURNSERVER, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         f"--min-port={relay_min}", f"--max-port={relay_min + 20}", "--no-tls", "--no-dtls", "--no-cli",
         "--no-multicast-peers", "--allow-loopback-peers", "--lt-cred-mech", f"--user={USER}:{SECRET}",
         "--realm=voiceai.test", "--simple-log", f"--log-file={log}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _stun_answers(port) or proc.poll() is not None, "coturn to answer STUN", 15)
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        yield port
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def _stun_answers(port: int) -> bool:
    """A STUN Binding Request (RFC 5389) gets a Binding Success Response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        sock.sendto(struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12)), ("127.0.0.1", port))
        try:
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and struct.unpack("!H", data[:2])[0] == 0x0101


def _settings(folder: Path, turn_port: int, credential: str) -> Settings:
    servers = [{"urls": [f"stun:127.0.0.1:{turn_port}"]},
               {"urls": [f"turn:127.0.0.1:{turn_port}?transport=udp"], "username": USER, "credential": credential}]
    tree = {**FAST_CALL, "channels.webrtc.host_addresses": ["127.0.0.1"], "channels.webrtc.ice_servers": servers,
            "auth.rate_limit.enabled": False}
    return isolate(load_settings(profile="cpu", env={}, overrides=tree), folder)


async def _fakes(s: Settings) -> BridgeClients:
    return BridgeClients(FakeVadClient(), FakeAsrClient(), FakeLlmClient(), FakeTtsClient(), FakeTtsClient())


async def _offer_and_answer(url: str) -> tuple[httpx.Response, dict]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        started = (await http.post("/v1/calls", json={"language": "en"})).json()
        auth = {"Authorization": f"Bearer {started['token']}"}
        config = (await http.get(f"/v1/calls/{started['call_id']}/webrtc", headers=auth)).json()
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("audio", direction="sendrecv")
            pc.createDataChannel("events")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await http.post(f"/v1/calls/{started['call_id']}/webrtc", headers=auth,
                                     json={"sdp": pc.localDescription.sdp, "type": "offer"})
        finally:
            await pc.close()
    return answer, config


async def test_the_bridge_offers_a_turn_relay_and_anonymous_pages_get_no_turn_secret(turn, tmp_path) -> None:
    with serve_app(create_app(_settings(tmp_path, turn, SECRET), clients_factory=_fakes, kb_factory=None)) as url:
        answer, config = await _offer_and_answer(url)
    assert answer.status_code == 200, answer.text
    candidates = [line for line in answer.json()["sdp"].splitlines() if line.startswith("a=candidate")]
    assert any(" typ relay " in c and " 127.0.0.1 " in c for c in candidates), candidates  # allocated on coturn
    assert any(c.endswith(" typ host") for c in candidates), candidates
    # The page of the anonymous demo tenant sees STUN, not the TURN server whose secret it would need.
    assert config["ice_servers"] == [{"urls": [f"stun:127.0.0.1:{turn}"]}]
    assert SECRET not in str(config)


async def test_wrong_turn_credentials_mean_no_relay_but_the_call_still_answers(turn, tmp_path) -> None:
    settings = _settings(tmp_path, turn, "not-the-secret")
    with serve_app(create_app(settings, clients_factory=_fakes, kb_factory=None)) as url:
        answer, _ = await _offer_and_answer(url)
    assert answer.status_code == 200, answer.text
    assert " typ relay " not in answer.json()["sdp"]
