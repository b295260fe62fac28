"""The command layer: argparse, printing and exit codes only; the work is the library's.

    llm-summarizer train | evaluate | summarize | export | data | bench | env | configs

`main.py` dispatches; `boot.py` states the import rules and maps errors to exit codes; one module per
command. A new command is one module with `build_parser(prog)` and `main(argv) -> int`, plus one line in
`main.COMMANDS`. No library module imports anything from here.
"""
