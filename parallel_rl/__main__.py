"""`python -m parallel_rl ...` is the `parallel-rl` command (and what torchrun runs on each rank)."""


from .cli import exit_process, main

exit_process(main())
