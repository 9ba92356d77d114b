"""The YAML defaults are found in a checkout and in a regular install."""

import os

import pytest

from recbole_perpeft.utils import INSTALLED_PROPERTIES, PROPERTIES_DIR, find_properties_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _defaults(folder) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "overall.yaml"), "w") as handle:
        handle.write("topk: [10]\n")


def test_checkout_properties_beside_the_package():
    assert PROPERTIES_DIR == os.path.join(ROOT, "properties")


def test_installed_properties_under_the_prefix_when_no_checkout(tmp_path):
    package = tmp_path / "site-packages" / "recbole_perpeft"
    package.mkdir(parents=True)
    prefix = tmp_path / "venv"
    _defaults(prefix / INSTALLED_PROPERTIES)
    assert find_properties_dir(str(package), str(prefix)) == str(prefix / INSTALLED_PROPERTIES)
    # a checkout's properties/ wins over an installed copy
    _defaults(tmp_path / "site-packages" / "properties")
    assert find_properties_dir(str(package), str(prefix)) == str(tmp_path / "site-packages" / "properties")


def test_missing_properties_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="overall.yaml"):
        find_properties_dir(str(tmp_path / "pkg"), str(tmp_path / "prefix"))


def test_setup_cfg_installs_every_yaml_file():
    # each properties/ sub-folder is named in [options.data_files]
    text = open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8").read()
    for folder, _, files in os.walk(os.path.join(ROOT, "properties")):
        if any(name.endswith(".yaml") for name in files):
            relative = os.path.relpath(folder, ROOT)
            pattern = f"{relative}/*.yaml" if relative != "properties" else "properties/overall.yaml"
            assert pattern in text, relative
