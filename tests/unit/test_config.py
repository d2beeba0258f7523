"""Config loading: valid files load; every kind of mistake is reported with file:line and a hint."""
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, redact_url

GOOD = """\
model:
  path: model.onnx
kafka:
  bootstrap_servers: "127.0.0.1:9092"
cameras:
  - id: gate-1
    url: "rtsp://admin:${GATE_PASS}@10.0.0.5/stream1"
    fps: 5
  - {id: yard, url: "rtsp://10.0.0.6:8554/live"}
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return path


def problems(path: Path, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, {"GATE_PASS": "pw"} if env is None else env)
    return info.value.problems


def test_valid_config_loads_with_defaults_and_env_secret(tmp_path):
    config = load_config(write(tmp_path, GOOD), {"GATE_PASS": "s3cret!"})
    assert [c.id for c in config.cameras] == ["gate-1", "yard"]
    assert config.cameras[0].url == "rtsp://admin:s3cret!@10.0.0.5/stream1"
    assert config.cameras[0].redacted_url == "rtsp://admin:***@10.0.0.5/stream1"
    assert config.model.path == tmp_path / "model.onnx"  # relative to the config file
    assert config.batching.max_batch == 8 and config.model.confidence == 0.25
    assert config.secrets() == {"s3cret!"}


def test_missing_env_var_names_variable_and_line(tmp_path):
    path = write(tmp_path, GOOD)
    [line] = problems(path, env={})
    assert line.startswith(f"{path}:7: cameras[0].url: environment variable GATE_PASS is not set")


def test_a_secret_can_come_from_the_file_VAR_FILE_names_not_the_environment(tmp_path):
    """${GATE_PASS} reads GATE_PASS, or the file GATE_PASS_FILE names (a Kubernetes or Docker
    secret mounted as a file, so the password is in no process environment); unreadable: one line."""
    secret = tmp_path / "gate-pass"
    secret.write_text("fr0m-a-file\n")
    config = load_config(write(tmp_path, GOOD), {"GATE_PASS_FILE": str(secret)})
    assert config.cameras[0].url == "rtsp://admin:fr0m-a-file@10.0.0.5/stream1" and config.secrets() == {"fr0m-a-file"}
    [line] = problems(write(tmp_path, GOOD), env={"GATE_PASS_FILE": str(tmp_path / "absent")})
    assert line.startswith(f"{tmp_path / 'cameras.yaml'}:7: cameras[0].url: GATE_PASS_FILE names ") and "cannot be read" in line


def test_env_default_is_used(tmp_path):
    path = write(tmp_path, GOOD.replace("${GATE_PASS}", "${GATE_PASS:-fallback}"))
    assert "fallback" in load_config(path, {}).cameras[0].url


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    fps: 5", "    fps: 0", ":8: cameras[0].fps: Input should be greater than 0"),
        ("    fps: 5", "    fps: fast", ":8: cameras[0].fps: Input should be a valid number"),
        ("    fps: 5", "    fps: 5\n    zoom: 2", ":9: cameras[0].zoom: unknown key 'zoom'; allowed keys here: cost, fps, gpu, id, models, start_time, tracking, transport, url"),
        ("  - {id: yard,", "  - {id: gate-1,", ":9: cameras[1].id: duplicate camera id 'gate-1' (first at line 6)"),
        ("rtsp://10.0.0.6", "http://10.0.0.6", ":9: cameras[1].url: scheme 'http' is not rtsp://, rtsps:// or file://"),
        ("rtsp://10.0.0.6:8554", "rtsp://10.0.0.6:99999", ":9: cameras[1].url: bad port"),
        ('"127.0.0.1:9092"', '"kafka"', ":4: kafka.bootstrap_servers: 'kafka' is not host:port"),
        ("  path: model.onnx", "  path: missing.onnx", ":2: model.path: file "),
        ("  path: model.onnx", "  path: model.onnx\n  confidence: 2", ":3: model.confidence: Input should be less than or equal to 1"),
        ("kafka:\n", "kafka:\n  linger: 5\n", ":4: kafka.linger: unknown key 'linger'"),
        ("  - id: gate-1", "  - id: 'gate 1'", ":6: cameras[0].id: String should match pattern"),
        ('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  security_protocol: SASL_SSL\n',
         ":3: kafka: security_protocol SASL_SSL needs a sasl: section"),
        ('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  sasl: {mechanism: PLAIN, username: u, password: p}\n',
         ":3: kafka: sasl: is set but security_protocol PLAINTEXT does not use it"),
        ('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  security_protocol: SASL_PLAINTEXT\n  sasl: {mechanism: MD5, username: u, password: p}\n',
         ":6: kafka.sasl.mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
        ('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  security_protocol: SSL\n  tls: {cafile: ca.pem}\n',
         ":6: kafka.tls.cafile: file "),
        ('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  security_protocol: SSL\n  tls: {certfile: model.onnx}\n',
         ":6: kafka.tls: certfile and keyfile go together"),
    ],
)
def test_each_mistake_is_reported_at_its_line(tmp_path, old, new, expected):
    path = write(tmp_path, GOOD.replace(old, new, 1))
    lines = problems(path)
    assert any(line.startswith(f"{path}{expected}") for line in lines), lines


def test_missing_section_and_empty_camera_list(tmp_path):
    path = write(tmp_path, "model: {path: model.onnx}\ncameras: []\n")
    lines = problems(path)
    assert any(":1: kafka: required key 'kafka' is missing" in line for line in lines), lines
    assert any(":2: cameras: List should have at least 1 item" in line for line in lines), lines


def test_all_problems_are_reported_at_once(tmp_path):
    text = GOOD.replace("    fps: 5", "    fps: -1\n    zoom: 2").replace("rtsp://10.0.0.6", "ftp://10.0.0.6")
    assert len(problems(write(tmp_path, text))) == 3


def test_yaml_syntax_error_and_duplicate_keys(tmp_path):
    assert problems(write(tmp_path, "model: [unclosed\n"))[0].startswith(f"{tmp_path}/cameras.yaml:")
    dup = GOOD.replace("    fps: 5", "    fps: 5\n    fps: 6")
    assert any("key 'fps' appears twice" in p for p in problems(write(tmp_path, dup)))


def test_validate_config_cli_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GATE_PASS", "pw")
    good = write(tmp_path, GOOD)
    assert main(["validate-config", str(good)]) == 0
    assert "OK (2 cameras)" in capsys.readouterr().out
    bad = write(tmp_path, GOOD.replace("    fps: 5", "    fps: 0"))
    assert main(["validate-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{bad}:8:")


def test_run_refuses_invalid_config_before_starting(tmp_path, capsys):
    bad = write(tmp_path, GOOD)  # GATE_PASS unset in this test's environment
    assert main(["run", "--config", str(bad)]) == 2
    assert "GATE_PASS" in capsys.readouterr().err


def test_redact_url_keeps_user_and_host():
    assert redact_url("rtsp://u:p@h:554/x?y=1") == "rtsp://u:***@h:554/x?y=1"
    assert redact_url("rtsp://h/x") == "rtsp://h/x"


def test_python_dash_m_pipeline_is_the_same_cli(tmp_path):
    import subprocess
    import sys

    good = write(tmp_path, GOOD)
    ok = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(good)],
                        capture_output=True, text=True, env={"GATE_PASS": "pw", "PATH": ""}, timeout=60)
    assert ok.returncode == 0 and "OK (2 cameras)" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(good)],
                         capture_output=True, text=True, env={"PATH": ""}, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "GATE_PASS" in bad.stderr


def test_sasl_password_comes_from_the_environment_and_is_a_secret(tmp_path):
    text = GOOD.replace('"127.0.0.1:9092"\n', '"127.0.0.1:9092"\n  security_protocol: SASL_SSL\n'
                        '  sasl: {mechanism: SCRAM-SHA-512, username: pipeline, password: "${KAFKA_PASS}"}\n')
    config = load_config(write(tmp_path, text), {"GATE_PASS": "pw1", "KAFKA_PASS": "kafka-pw-9"})
    assert config.kafka.sasl.password == "kafka-pw-9" and "kafka-pw-9" in config.secrets()


@pytest.mark.parametrize("content, detail", [
    ("cameras: []\n# caf\xe9 in Latin-1\n".encode("latin-1"), "byte 0xe9 at offset 17 is not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "byte 0x89 at offset 0 is not UTF-8"),
    (b"model: {}\n\x00\x00\x00", "a NUL byte at offset 10"),
])
def test_a_file_that_is_not_utf8_text_is_refused_in_one_line_with_exit_2(tmp_path, capsys, content, detail):
    path = tmp_path / "cameras.yaml"
    path.write_bytes(content)
    for argv in (["validate-config", str(path)], ["run", "--config", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{path}: not a UTF-8 text file ({detail}"), err


def test_transport_defaults_to_auto_and_each_camera_may_choose(tmp_path):
    text = GOOD.replace("    fps: 5", "    fps: 5\n    transport: udp")
    config = load_config(write(tmp_path, text), {"GATE_PASS": "pw"})
    assert config.source.transport == "auto"
    assert [c.transport for c in config.cameras] == ["udp", None]
    bad = GOOD.replace("    fps: 5", "    fps: 5\n    transport: sctp")
    assert any(p.startswith(f"{tmp_path}/cameras.yaml:9: cameras[0].transport:") and "'auto', 'tcp' or 'udp'" in p
               for p in problems(write(tmp_path, bad))), problems(write(tmp_path, bad))


# ---------------------------------------------------------------------- several models
MODELS = """\
model:
  path: model.onnx
models:
  helmets: {path: model.onnx, confidence: 0.5, topic: helmets}
  shapes: {path: model.onnx}
kafka:
  bootstrap_servers: "127.0.0.1:9092"
cameras:
  - {id: line-1, url: "rtsp://10.0.0.5/s"}
  - {id: gate-1, url: "rtsp://10.0.0.6/s", models: [default, helmets]}
  - {id: gate-2, url: "rtsp://10.0.0.7/s", models: [helmets]}
"""


def test_cameras_name_their_models_and_each_model_its_topic_and_message_name(tmp_path):
    config = load_config(write(tmp_path, MODELS), {})
    assert [config.models_of(c) for c in config.cameras] == [["default"], ["default", "helmets"], ["helmets"]]
    assert config.models["helmets"].path == tmp_path / "model.onnx"  # relative to the config file, as `model`'s
    assert (config.topic_of("helmets"), config.topic_of("shapes"), config.topic_of("default")) == \
        ("helmets", "detections", "detections")
    # a named model's messages carry its name; the top-level model's its file's, as before `models`
    assert (config.message_name("helmets"), config.message_name("default")) == ("helmets", "model")
    assert list(config.detectors()) == ["default", "helmets", "shapes"]


def test_a_config_of_named_models_alone_needs_every_camera_to_name_its_own(tmp_path):
    only_named = MODELS.replace("model:\n  path: model.onnx\nmodels:", "models:")
    path = write(tmp_path, only_named)
    [line] = problems(path, env={})
    assert line.startswith(f"{path}:7: cameras[0].models: camera line-1 names no models and there is no top-level "
                           "`model`; list the ones it needs (helmets, shapes)"), line
    fixed = only_named.replace('url: "rtsp://10.0.0.5/s"}', 'url: "rtsp://10.0.0.5/s", models: [shapes]}')
    config = load_config(write(tmp_path, fixed.replace("[default, helmets]", "[shapes, helmets]")), {})
    assert config.model is None and config.backend == "auto"


@pytest.mark.parametrize("old, new, expected", [
    ("models: [helmets]}", "models: [helmet]}",
     ":11: cameras[2].models: camera gate-2 names 'helmet', not a model here; known: default, helmets, shapes"),
    ("models: [helmets]}", "models: [helmets, helmets]}", ":11: cameras[2].models: camera gate-2 names a model twice"),
    ("  shapes: {path: model.onnx}", "  canary: {path: model.onnx}", ":5: models.canary: the name 'canary' is taken"),
    ("  shapes: {path: model.onnx}", "  shapes: {path: model.onnx, backend: tensorrt}",
     ":3: models: one node runs its models on one backend, these differ (default: auto, helmets: auto, shapes: tensorrt)"),
    # the top-level model's messages are named after its file, "model": a model named so on the same topic clashes
    ("  shapes: {path: model.onnx}", "  model: {path: model.onnx}",
     ":5: models.model: it and 'default' both publish to topic 'detections' as model 'model'"),
    ("  helmets: {path: model.onnx, confidence: 0.5, topic: helmets}", "  helmets: {path: model.onnx, topic: 'a b'}",
     ":4: models.helmets.topic: String should match pattern"),
    ("models: [helmets]}", "models: [helmets]}\ncanary: {model: {path: model.onnx}, cameras: [gate-2]}",
     "canary.cameras: gate-2 do not use the top-level model (`default`), which the canary replaces"),
    ("  shapes: {path: model.onnx}", "  shapes: {path: model.onnx, kind: classify}",
     ":5: models.shapes: a classifier needs `on: {model: ..., classes: [...]}`"),
    ("  shapes: {path: model.onnx}", "  shapes: {path: model.onnx, kind: classify, on: {model: hats}}",
     ":5: models.shapes.on.model: 'hats' is not a detector here; known: default, helmets"),
    ("  shapes: {path: model.onnx}", "  shapes: {path: model.onnx, kind: classify, on: {model: helmets}, topic: x}",
     "a classifier publishes nothing of its own"),
    ("  shapes: {path: model.onnx}", "  shapes: {path: model.onnx, on: {model: helmets}}",
     "`on` is for classifiers (kind: classify)"),
])
def test_each_mistake_of_several_models_is_named_with_its_line(tmp_path, old, new, expected):
    assert old in MODELS
    path = write(tmp_path, MODELS.replace(old, new))
    found = problems(path, env={})
    assert any(expected in line and line.startswith(str(path)) for line in found), found


def test_a_classifier_runs_on_a_detector_and_no_camera_names_it(tmp_path):
    text = MODELS.replace("  shapes: {path: model.onnx}",
                          "  colour: {path: model.onnx, kind: classify, on: {model: default, classes: [disc]}}")
    config = load_config(write(tmp_path, text), {})
    assert list(config.detectors()) == ["default", "helmets"] and list(config.classifiers_on("default")) == ["colour"]
    path = write(tmp_path, text.replace("models: [helmets]}", "models: [helmets, colour]}"))
    assert any(":11: cameras[2].models: 'colour' is a classifier: it runs on the detections of its `on.model`" in line
               for line in problems(path, env={}))


def test_a_second_model_on_its_own_topic_may_share_the_top_level_models_file_name(tmp_path):
    text = MODELS.replace("  shapes: {path: model.onnx}", "  model: {path: model.onnx, topic: other}")
    assert load_config(write(tmp_path, text), {}).topic_of("model") == "other"


def test_yaml_booleans_are_true_and_false_only_and_settings_still_read_yes_and_off(tmp_path):
    """`on:` (a classifier's) and a camera named `no` stay text (YAML 1.2), not booleans (YAML 1.1)."""
    text = GOOD.replace("  - {id: yard,", "  - {id: no, tracking: {enabled: off, appearance: yes},")
    config = load_config(write(tmp_path, text), {"GATE_PASS": "pw"})
    assert config.cameras[1].id == "no"
    assert config.tracking_for(config.cameras[1]).enabled is False and config.cameras[1].tracking.appearance is True


def test_a_recording_is_a_file_url_relative_to_the_config_and_must_exist(tmp_path):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "gate 1.mp4").write_bytes(b"x")
    text = GOOD.replace('rtsp://10.0.0.6:8554/live"}', 'file:rec/gate%201.mp4", start_time: "2026-12-06T14:03:12+01:00"}')
    config = load_config(write(tmp_path, text), {"GATE_PASS": "pw"})
    yard = config.cameras[1]
    assert yard.is_file and not config.cameras[0].is_file
    assert yard.file_path == tmp_path / "rec" / "gate 1.mp4"
    assert yard.start_time.timestamp() == 1796562192.0  # 13:03:12 UTC

    missing = problems(write(tmp_path, text.replace("gate%201", "gone")))
    assert missing == [f"{tmp_path / 'cameras.yaml'}:9: cameras[1].url: file {tmp_path / 'rec' / 'gone.mp4'} does not "
                       "exist; fix the path (relative paths start at the config file's folder)"]


@pytest.mark.parametrize("url, start, expected", [
    ("file://camera-host/rec.mp4", "", "only local files are read"),
    ("file:///", "", "file URL has no path"),
    ("rtsp://10.0.0.6/live", ", start_time: '2026-12-06T14:03:12Z'", "start_time is for file:// cameras only"),
    ("file:///tmp/x.mp4", ", start_time: '2026-12-06T14:03:12'", "give a time zone"),
])
def test_bad_recordings_are_refused_with_what_to_do(tmp_path, url, start, expected):
    text = GOOD.replace('url: "rtsp://10.0.0.6:8554/live"}', f'url: "{url}"{start}}}')
    found = problems(write(tmp_path, text))
    assert len(found) == 1 and expected in found[0] and ":9: cameras[1]" in found[0], found
