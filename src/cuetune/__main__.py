"""`python -m cuetune ...`: the CLI, for launchers that start modules (`accelerate launch -m cuetune`)."""

from cuetune.cli import main

main()
