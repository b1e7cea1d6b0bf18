"""hybridexec benchmarks: ``python -m benchmarks [--quick] [--only NAME ...]``.

Every ``benchmarks/bench_<name>.py`` module that defines ``run(quick: bool) -> None`` is a
benchmark; see ``benchmarks/README.md``.
"""
