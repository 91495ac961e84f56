"""Build hook only (the project is described in pyproject.toml): the wheel carries what cliptk
needs at run time outside a checkout, copied into the package as ``cliptk/_data/``:

* ``data/models/*`` -> ``cliptk/_data/models/`` (the bundled tiny CLIP, its card and training curve:
  ``ct.load_model()`` works offline; :func:`cliptk.settings.data_dir` is ``cliptk/_data`` there);
* ``configs/*.yaml`` -> ``cliptk/_data/configs/`` (``ct.recipes.config_path("cpu_tiny")``).

An editable install (``pip install -e .``) and a checkout read ``data/`` and ``configs/`` in place.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: source folder (relative to the project) -> (destination in the package, file patterns)
SHIPPED = {"data/models": ("cliptk/_data/models", ("*.safetensors", "*.md", "*.json")),
           "configs": ("cliptk/_data/configs", ("*.yaml",))}


class BuildPyWithData(build_py):
    """``build_py`` plus the copies of :data:`SHIPPED` into the build folder."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for src, (dst, patterns) in SHIPPED.items():
            files = sorted({f for pattern in patterns for f in (HERE / src).glob(pattern) if f.is_file()})
            if src == "data/models" and not any(f.suffix == ".safetensors" for f in files):
                raise SystemExit(f"{HERE / src} holds no bundled model (*.safetensors): the wheel would not load "
                                 "ct.load_model() offline; restore data/models/ from git")
            for f in files:
                target = Path(self.build_lib) / dst / f.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)


setup(cmdclass={"build_py": BuildPyWithData})
