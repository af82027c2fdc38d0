"""Build step that ships the data a run needs inside the wheel (see harness/paths.py): benchmark specs, the tiny
SD model, the committed expectations and the papers' reported rows, copied to harness/_shipped/."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("datasets", "models", "results/expectations", "results/reference")


class BuildWithShippedData(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "harness" / "_shipped"
        for folder in SHIPPED:
            shutil.copytree(root / folder, target / folder, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedData})
