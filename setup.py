"""Install paddlemix: `pip install -e .` (the stack itself is pinned in requirements.txt)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements():
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="paddlemix",
    version="0.1.0",
    description="CLIP-family model zoo (CLIP, EVA-CLIP, CoCa) for PaddlePaddle with one shared trainer",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["paddlemix", "paddlemix.*"]),
    package_data={
        "paddlemix": [
            "models/model_configs/*/*.json",
            "processors/*.txt.gz",
            "processors/LICENSE*",
            "evaluation/*.txt",
            "external_ops/csrc/*.cc",
            "external_ops/csrc/*.h",
            "external_ops/csrc/*.cu",
            "external_ops/csrc/*.cuh",
            "external_ops/harness/*.cu",
        ]
    },
    install_requires=read_requirements(),
)
