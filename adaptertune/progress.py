"""Progress bars (tqdm) for steps, epochs and sweeps, shown only on a terminal and without --quiet.

Lines logged while bars are shown go through `echo`, which prints them above the bars.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def enabled(quiet: bool = False) -> bool:
    """Bars only when a person watches: stdout is a terminal and --quiet was not given."""
    return not quiet and sys.stdout.isatty()


def bar(total: int, desc: str, show: bool, unit: str = "it", leave: bool = False, initial: int = 0) -> tqdm:
    """A bar with rate and ETA (tqdm's own), or a silent stand-in when `show` is False."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, initial=initial, disable=not show,
                file=sys.stdout, dynamic_ncols=True, smoothing=0.1)


def echo(line: str) -> None:
    """print(), without tearing the bars on screen."""
    tqdm.write(line, file=sys.stdout)
