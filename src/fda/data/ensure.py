"""``python -m fda.data.ensure NAME [DATA_DIR]``: exit 0 if the dataset loads, else say how to get it, exit 1."""

from __future__ import annotations

import sys

from .datasets import DatasetError, load_dataset


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or len(args) > 2:
        print("usage: python -m fda.data.ensure NAME [DATA_DIR]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    name = args[0]
    data_dir = args[1] if len(args) > 1 else None
    try:
        ds = load_dataset(name, data_dir)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {ds.name} ({ds.num_train} train / {ds.num_test} test) from {ds.source or '(generated)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
