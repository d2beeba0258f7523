"""The systemd units in deploy/: systemd itself accepts them, the single one runs our CLI as a
hardened notify service with a watchdog, and the template (several daemons on one node) is the
same unit but for its own spool, node id and ports."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "rtsp-pipeline.service"
TEMPLATE = REPO / "deploy" / "systemd" / "rtsp-pipeline@.service"
INSTALLED_VENV = "/opt/rtsp-pipeline/venv"


def unit_sections(unit: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("source,name", [(UNIT, UNIT.name), (TEMPLATE, "rtsp-pipeline@a.service")])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path, source, name):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is required (apt-get install systemd; scripts/setup.sh installs it)")
    # the unit names the installed venv; point it at this checkout's so the commands exist
    unit = tmp_path / name  # the template as an instance of it
    unit.write_text(source.read_text().replace(INSTALLED_VENV, str(Path(sys.executable).parent.parent)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no ignored keys or warnings either


def test_the_unit_is_a_hardened_notify_service_with_a_watchdog():
    service = unit_sections()["Service"]
    assert service["Type"] == ["notify"] and int(service["WatchdogSec"][0]) >= 10
    assert service["User"] == ["rtsp-pipeline"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    # strict makes everything read-only: the spool and engine cache must be writable
    assert set(service["ReadWritePaths"][0].split()) == {"/var/lib/rtsp-pipeline", "/var/cache/rtsp-pipeline"}
    assert service["RestartPreventExitStatus"] == ["2"]  # a bad config is not retried in a loop


def test_the_units_commands_are_ones_our_cli_accepts(tmp_path):
    # ExecStartPre/ExecStart as written, run against a real config: validate-config passes and
    # `run --config` is the daemon's own command line
    service = unit_sections()["Service"]
    config = REPO / "configs" / "example.yaml"
    validate = next(c for c in service["ExecStartPre"] if "validate-config" in c)
    for command in (validate, service["ExecStart"][0]):
        argv = command.split()
        assert argv[0] == f"{INSTALLED_VENV}/bin/rtsp-pipeline"
        assert argv[-1] == "/etc/rtsp-pipeline/cameras.yaml"
    check = [sys.executable, "-m", "pipeline", *validate.split()[1:-1], str(config)]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={"GATE_PASS": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert service["ExecStart"][0].split()[1:3] == ["run", "--config"]


def test_cuda_may_create_its_uvm_device_node_on_the_first_start_after_boot(tmp_path):
    """NoNewPrivileges and the empty capability set stop CUDA's setuid nvidia-modprobe, so the unit
    runs it before the daemon with full privileges ("+"), never failing the start ("-")."""
    pre = next(c for c in unit_sections()["Service"]["ExecStartPre"] if "nvidia-modprobe" in c)
    assert pre.startswith("-+/bin/sh -c ")
    script = pre[len("-+/bin/sh -c "):].strip("'")
    assert subprocess.run(["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin"}).returncode == 0  # no NVIDIA driver
    called = tmp_path / "called"
    modprobe = tmp_path / "nvidia-modprobe"  # stands in for the driver's tool
    modprobe.write_text(f"#!/bin/sh\necho \"$@\" > {called}\n")
    modprobe.chmod(0o755)
    subprocess.run(["/bin/sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=True)
    assert called.read_text().split() == ["-u", "-c=0"]


def test_the_template_is_the_unit_with_a_spool_node_id_and_ports_per_instance():
    """Several daemons on one node: each instance has its own spool, its own id in the placement
    group and its own ports, and nothing else differs from the single unit (they cannot drift)."""
    one, each = unit_sections(UNIT), unit_sections(TEMPLATE)
    assert each["Unit"]["Description"] == [one["Unit"]["Description"][0] + ", instance %i"]
    service, single = each["Service"], one["Service"]
    assert service["StateDirectory"] == ["rtsp-pipeline/%i"]
    assert service["ReadWritePaths"] == ["/var/lib/rtsp-pipeline/%i /var/cache/rtsp-pipeline"]
    assert service["EnvironmentFile"] == [*single["EnvironmentFile"], "/etc/rtsp-pipeline/%i.env"]
    assert sorted(service["Environment"]) == sorted([*single["Environment"], "NODE_ID=%H-%i"])
    own = {"StateDirectory", "ReadWritePaths", "EnvironmentFile", "Environment"}
    assert {k: v for k, v in service.items() if k not in own} == {k: v for k, v in single.items() if k not in own}
    assert each["Install"] == one["Install"] and set(each["Unit"]) == set(one["Unit"])


def test_one_camera_list_serves_every_instance(tmp_path):
    """The config the operating guide gives for instances: placement on, the node id and the
    metrics port from the instance's environment; validate-config accepts it for each instance."""
    config = tmp_path / "cameras.yaml"
    text = (REPO / "configs" / "example.yaml").read_text().replace("../engines/", f"{REPO}/engines/")
    assert '  listen: "127.0.0.1:9108"' in text
    config.write_text(text.replace('  listen: "127.0.0.1:9108"', '  listen: "127.0.0.1:${METRICS_PORT}"')
                      + 'placement:\n  mode: kafka-group\n  node_id: "${NODE_ID}"\n')
    for node, port in (("box-a", "9109"), ("box-b", "9110")):
        result = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(config)], capture_output=True,
                                text=True, timeout=60, cwd=REPO,
                                env={"GATE_PASS": "x", "PATH": "/usr/bin:/bin", "NODE_ID": node, "METRICS_PORT": port})
        assert result.returncode == 0, result.stderr
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=REPO, env={"GATE_PASS": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "NODE_ID" in result.stdout + result.stderr  # an instance without its file
