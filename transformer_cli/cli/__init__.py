"""The `tfx` command line (Typer). Commands stay thin: parse options, load the config, call
a module's run.
"""
