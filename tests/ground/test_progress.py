"""Progress lines where no bar shows (a CI log): a long fit says where it is, a short one stays
quiet, and "off" says nothing."""
from loccheck.progress import Progress


def _steps(progress, n, losses=True):
    for step in range(1, n + 1):
        progress.on_step(step, n, 0.5 / step if losses else None)


def test_a_long_fit_writes_a_line_per_interval_in_a_ci_log():
    lines = []
    progress = Progress(3, "lines", metric="preference_margin", base=0.0, write=lines.append, title="c ")
    progress.LINE_EVERY = 0.0                     # every step counts as a minute later
    _steps(progress, 4)
    assert lines == [f"loccheck: c [1/3] fitting: step {s} of at most 4, loss {0.5 / s:.3g}" for s in (2, 3, 4)]


def test_a_short_fit_and_the_off_mode_write_nothing():
    lines = []
    _steps(Progress(3, "lines", metric="m", base=0.0, write=lines.append), 50)    # well under a minute
    progress = Progress(3, "off", metric="m", base=0.0, write=lines.append)
    progress.LINE_EVERY = 0.0
    _steps(progress, 5, losses=False)
    assert lines == []
