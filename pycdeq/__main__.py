"""``python -m pycdeq``: the ``pycdeq`` command line."""

from pycdeq.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
