"""The images: small, run as a non-root user, carry no compiler, and start; scripts/images.sh rebuilds an image
only when what it is made of changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.containers
ROOT = Path(__file__).resolve().parents[2]
Podman = Callable[..., subprocess.CompletedProcess[str]]
ENV = {"CONTAINERS_CONF": str(ROOT / "containers" / "containers.conf"), **os.environ}

# image: (the most megabytes it may take, what `--version` prints)
IMAGES = {
    "localhost/xgate:local": (260, "xgate 0.1.0"),
    "localhost/xgate-envoy:local": (130, "/1.40."),
    "localhost/xgate-etcd:local": (60, "etcd Version: 3.5."),
    "localhost/xgate-redis:local": (40, "Redis server v=7."),
}
COMPILERS = {"gcc", "cc", "c++", "g++", "clang", "tcc", "cc1", "as", "ld", "ld.bfd", "ld.gold", "x86_64-linux-gnu-gcc"}


def files_of(podman: Podman, image: str) -> list[str]:
    """Every path in the image's file system (from `podman export` of a container never started)."""
    container = podman("create", image).stdout.strip()
    try:
        export = subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE, env=ENV)
        assert export.stdout is not None
        with tarfile.open(fileobj=export.stdout, mode="r|") as archive:
            names = [member.name for member in archive]
        assert export.wait(60) == 0
        export.stdout.close()
    finally:
        podman("rm", "--force", container)
    return names


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_is_small_runs_as_a_user_and_has_no_compiler(podman: Podman, image: str) -> None:
    limit, version = IMAGES[image]
    [inspect] = json.loads(podman("image", "inspect", image).stdout)
    size = inspect["Size"] / 1e6
    print(f"{image}: {size:.0f} MB")
    assert size < limit
    assert inspect["Config"]["User"] == "10001:10001"
    programs = {PurePosixPath(name).name for name in files_of(podman, image) if "/bin/" in f"/{name}"}
    assert programs, "no program found: the listing is wrong"
    assert not programs & COMPILERS
    started = podman("run", "--rm", image, "--version")
    assert version in started.stdout


def test_the_xgate_image_runs_its_processes_without_privilege(podman: Podman) -> None:
    ran = podman("run", "--rm", "--entrypoint", "python3", "localhost/xgate:local", "-c",
                 "import os, shutil; print(os.getuid(), os.getgid(), shutil.which('envoy'))")  # fmt: skip
    assert ran.stdout.split() == ["10001", "10001", "None"]  # and Envoy's binary stays in its own image


def test_images_sh_rebuilds_only_what_changed(podman: Podman, tmp_path: Path) -> None:
    """A copy of the inputs of the Redis image, built under a tag of its own: a second run keeps the image, a
    changed input rebuilds it."""
    copy = tmp_path / "repo"
    for part in ("scripts", "containers", "src", "pyproject.toml", "README.md", ".dockerignore"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("*.whl", "__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, copy / part)
    tag = f"reuse-test-{tmp_path.name.lower()}"
    image = f"localhost/xgate-redis:{tag}"
    env = {**ENV, "XGATE_IMAGE_TAG": tag}

    def build() -> tuple[str, str]:
        ran = subprocess.run([copy / "scripts" / "images.sh", "xgate-redis"], capture_output=True, text=True, env=env,
                             timeout=300, check=True)  # fmt: skip
        return ran.stdout, podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()

    try:
        first, first_id = build()
        assert re.search(rf"{re.escape(image)} built in \d+ s", first)
        again, again_id = build()
        assert f"{image} is up to date" in again
        assert again_id == first_id
        collect = copy / "containers" / "collect.sh"
        collect.write_text(collect.read_text() + "# changed\n")
        changed, changed_id = build()
        assert re.search(rf"{re.escape(image)} built in \d+ s", changed)
        assert changed_id != first_id
    finally:
        podman("rmi", "--force", image, check=False)
