"""Regenerate the committed Python code of durable_tq.proto (needs grpcio-tools).

``python -m durable_tq.servers.grpc.generate`` rewrites ``durable_tq_pb2.py``, its ``.pyi``
and ``durable_tq_pb2_grpc.py`` beside the proto; tests/unit/test_grpc_proto.py checks that the
committed files are what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The folder the proto's import path is relative to (the one holding ``durable_tq/``).
ROOT = HERE.parents[2]
PROTO = HERE / "durable_tq.proto"
GENERATED = ("durable_tq_pb2.py", "durable_tq_pb2.pyi", "durable_tq_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules under ``out_dir`` (as ``durable_tq/servers/grpc/...``)."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    relative = PROTO.relative_to(ROOT).as_posix()
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            relative,
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed on {relative} (exit {code})")
    folder = out_dir / PROTO.parent.relative_to(ROOT)
    return [folder / name for name in GENERATED]


def main() -> None:
    for path in generate(ROOT):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
