#!/usr/bin/env python3
# ruff: noqa: TID251, S603, T201 - a build script: it runs pip and prints what it made
"""Build the Greengrass deployables of defender-agent.

``v2`` (default): the component — a versioned recipe and ``defender-agent.zip``, the
artifact holding the defender-agent wheel and the wheels of its dependencies, so
the recipe's ``install`` step runs ``pip install --no-index`` (nothing is
downloaded on the device)::

    python3 packaging/greengrass/build.py v2 --out build/gg --name com.example.DefenderAgent \
        --platform manylinux2014_aarch64 --platform manylinux2014_x86_64 --python-version 3.11

    build/gg/recipes/com.example.DefenderAgent-0.1.0.json
    build/gg/artifacts/com.example.DefenderAgent/0.1.0/defender-agent.zip

Wheels of native dependencies (awscrt) are per platform and Python version: name
every platform of your cores (``--platform``, pip's tags) and their Python
(``--python-version``); without them, this machine's. ``--bucket`` writes the
artifact's S3 URI into the recipe (else it keeps ``s3://BUCKET_NAME/...`` for
``gdk component publish``). ``--gdk`` is the Greengrass Development Kit's custom
build (``gdk-config.json`` here): the component name from that file, output in
``greengrass-build/``.

``v1``: the Greengrass v1 Lambda deployment zip — the defender_agent package, the
Greengrass Core SDK (``greengrasssdk``) and cbor2, pure Python only (Python 3.8)::

    python3 packaging/greengrass/build.py v1 --out build/gg-v1

Network access (PyPI) is needed here, at build time, and never on the device.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TEMPLATE = HERE / "recipe.json"
ARTIFACT = "defender-agent.zip"
#: The v1 Lambda's dependencies (greengrasssdk 1.6 needs cbor2 5.4).
V1_REQUIREMENTS = ("greengrasssdk==1.6.1", "cbor2==5.4.6")


def render_recipe(
    template: str, *, name: str, version: str, wheel: str, bucket: Optional[str]
) -> str:
    """The recipe for one build: the placeholders replaced, the artifact's URI set.

    >>> text = '{"n": "{COMPONENT_NAME}", "v": "{COMPONENT_VERSION}", "w": "x/{WHEEL}", '
    >>> text += '"u": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/a.zip"}'
    >>> render_recipe(text, name="c.D", version="1.0.0", wheel="d.whl", bucket="b")
    '{"n": "c.D", "v": "1.0.0", "w": "x/d.whl", "u": "s3://b/c.D/1.0.0/a.zip"}'
    """
    text = (
        template.replace("{COMPONENT_NAME}", name)
        .replace("{COMPONENT_VERSION}", version)
        .replace("{WHEEL}", wheel)
    )
    if bucket is not None:
        text = text.replace(
            "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/",
            f"s3://{bucket}/{name}/{version}/",
        )
    json.loads(text)  # still JSON
    return text


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def build_wheel(dest: Path) -> Path:
    """defender-agent's wheel, built from this checkout into ``dest``."""
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(ROOT))
    wheels = sorted(dest.glob("defender_agent-*.whl"))
    if not wheels:
        raise SystemExit("build.py: pip made no defender_agent wheel")
    return wheels[-1]


def download_dependencies(
    wheel: Path, dest: Path, platforms: list[str], python_version: Optional[str]
) -> None:
    """The wheels of the package's dependencies, for each platform (binary wheels only)."""
    common = ["download", "--quiet", "--only-binary=:all:", "--dest", str(dest), str(wheel)]
    if python_version:
        common += ["--python-version", python_version]
    if not platforms:
        _pip(*common)
        return
    for platform in platforms:
        _pip(*common, "--platform", platform, "--implementation", "cp")


def build_v2(
    out: Path,
    *,
    name: str,
    bucket: Optional[str],
    platforms: list[str],
    python_version: Optional[str],
    wheels: Optional[Path],
) -> tuple[Path, Path]:
    """The versioned recipe and the artifact zip; returns their paths."""
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch)
        wheel = build_wheel(staging)
        if wheels is not None:  # dependency wheels fetched beforehand
            for found in wheels.glob("*.whl"):
                if not found.name.startswith("defender_agent-"):
                    shutil.copy2(found, staging / found.name)
        else:
            download_dependencies(wheel, staging, platforms, python_version)
        version = wheel.name.split("-")[1]
        artifacts = out / "artifacts" / name / version
        artifacts.mkdir(parents=True, exist_ok=True)
        archive = artifacts / ARTIFACT
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for item in sorted(staging.glob("*.whl")):
                zipped.write(item, item.name)
    recipes = out / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    recipe = recipes / f"{name}-{version}.json"
    text = render_recipe(
        TEMPLATE.read_text(encoding="utf-8"),
        name=name,
        version=version,
        wheel=wheel.name,
        bucket=bucket,
    )
    recipe.write_text(text, encoding="utf-8")
    return recipe, archive


def build_v1(out: Path) -> Path:
    """The v1 Lambda zip: the package and its pure-Python dependencies, for Python 3.8."""
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch) / "lambda"
        _pip("install", "--quiet", "--no-deps", "--target", str(staging), str(ROOT))
        _pip(
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--target",
            str(staging),
            "--python-version",
            "3.8",
            "--only-binary=:all:",
            "--platform",
            "any",
            "--platform",
            "manylinux2014_x86_64",
            *V1_REQUIREMENTS,
        )
        out.mkdir(parents=True, exist_ok=True)
        archive = out / "defender-agent-greengrass-v1.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for item in sorted(staging.rglob("*")):
                relative = item.relative_to(staging)
                parts = relative.parts
                if item.is_dir() or "__pycache__" in parts or parts[0] == "bin":
                    continue
                if item.suffix == ".so":  # cbor2's C part: its pure-Python code runs anywhere
                    continue
                zipped.write(item, str(relative))
    return archive


def main(argv: Optional[list[str]] = None) -> int:
    """Build what the command line asks for; print the paths made."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", nargs="?", choices=("v2", "v1"), default="v2")
    parser.add_argument("--out", type=Path, default=Path("greengrass-build"))
    parser.add_argument("--name", default="com.example.DefenderAgent", help="component name")
    parser.add_argument("--bucket", help="S3 bucket of the artifact (else BUCKET_NAME stays)")
    parser.add_argument("--platform", action="append", default=[], help="pip platform tag")
    parser.add_argument("--python-version", help="the cores' Python, e.g. 3.11")
    parser.add_argument("--wheels", type=Path, help="dependency wheels fetched beforehand")
    parser.add_argument("--gdk", action="store_true", help="GDK custom build (gdk-config.json)")
    args = parser.parse_args(argv)
    if args.kind == "v1":
        print(build_v1(args.out))
        return 0
    name = args.name
    if args.gdk:
        config = json.loads((Path.cwd() / "gdk-config.json").read_text(encoding="utf-8"))
        name = next(iter(config["component"]))
    recipe, archive = build_v2(
        args.out,
        name=name,
        bucket=args.bucket,
        platforms=args.platform,
        python_version=args.python_version,
        wheels=args.wheels,
    )
    print(recipe)
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
