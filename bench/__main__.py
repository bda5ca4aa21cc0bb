"""``python -m bench``: every benchmark, one table (see ``bench.suite``)."""

from .suite import main

main()
