"""What setup.cfg ships is what the tree holds: a package left out installs a server that cannot import."""

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_package_in_the_tree_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("handlers", "middleware", "store")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found


def test_every_top_level_module_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = {name.strip() for name in config["options"]["py_modules"].split(",")}
    assert listed == {path.stem for path in ROOT.glob("oxc_*.py")}
