"""`python -m bench.chaos` is `cardflow chaos`."""

from starters.chaos import main

main()
