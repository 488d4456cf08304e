"""``python -m mmjax`` is the same as the ``mmjax`` console script."""

from mmjax.cli import main

if __name__ == "__main__":
  raise SystemExit(main())
