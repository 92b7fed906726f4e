from setuptools import find_packages, setup

setup(
    name="megatron_opt",
    version="0.1.0",
    description="Megatron-style optimizers (Adam/SGD, Muon family, Lion, SOAP) for tensor-, pipeline- and data-parallel training",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_opt", "megatron_opt.*", "arguments", "arguments.*", "training", "training.*"]),
    install_requires=["torch>=2.9", "pyyaml>=6"],
    extras_require={
        # lion-pytorch is an independent Lion implementation the tests compare against.
        "test": ["pytest>=8", "hypothesis>=6", "matplotlib>=3.7", "numpy", "lion-pytorch==0.2.5"],
        "plot": ["matplotlib>=3.7"],
        "te": ["transformer-engine[pytorch]"],
    },
)
