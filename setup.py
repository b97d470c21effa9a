"""Carries the repository's top-level `configs/` (model presets, classify templates, training recipes), the example
adapters of `lora_adapters/` and the prompt lists of `samples/` into the built package as `imagegen/shipped/`, so that an installed imagegen finds them
through the package wherever it is installed (imagegen.locations). Everything else is in pyproject.toml.

Why a build_py step and not setuptools' package-dir mapping: the folders stay where the design puts them (no second
copy in git), the copy is an explicit list of exactly the files that ship (no training leftovers such as
lora_adapters/.<name>.training/), and an editable install or a checkout needs nothing built - it reads the top-level
folders directly (imagegen.locations.shipped_root). MANIFEST.in puts the same files into an sdist, so a wheel built
from the sdist carries them too.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = "imagegen/shipped"  # imagegen.locations.SHIPPED_FOLDER
SHIPPED_FILES = {  # folder (relative to the repository) -> the patterns of its files that ship
    "configs/models": ["*.toml"],
    "configs/templates": ["*.txt"],
    "configs/train": ["*.toml"],
    "lora_adapters": ["*.safetensors", "README.md"],
    "samples": ["*.txt"],  # the README's `imagegen grid --prompts-file samples/prompts.txt`
}


def shipped_files() -> list[Path]:
    files = sorted({path for folder, patterns in SHIPPED_FILES.items() for pattern in patterns
                    for path in (HERE / folder).glob(pattern) if path.is_file() and not path.name.startswith(".")})
    if not any(path.name == "shapes.toml" for path in files):
        raise SystemExit("setup.py: configs/models/shapes.toml is missing; the package would have no default model")
    return files


class BuildPyWithShipped(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders
        for source in shipped_files():
            target = Path(self.build_lib) / SHIPPED / source.relative_to(HERE)
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [str(Path(self.build_lib) / SHIPPED / p.relative_to(HERE)) for p in shipped_files()]


setup(cmdclass={"build_py": BuildPyWithShipped})
