"""Progress lines off a terminal: counts, elapsed time and ETA; no line from the first unit alone."""

from naraim.console import progress


def test_plain_progress_waits_min_interval_and_prints_the_last_state_on_close(capsys):
    bar = progress(5, "preparing train", "image", min_interval=10.0)
    for i in range(5):
        bar.update(i + 1)
    assert capsys.readouterr().err == ""  # the first line waits min_interval: no ETA from one unit
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["preparing train: 5/5 images, elapsed 00:00, ETA 00:00"]


def test_plain_progress_without_interval_prints_every_update_once(capsys):
    bar = progress(2, "caching", "batch")
    bar.update(1)
    bar.update(2, "loss 0.5")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" elapsed")[0].rstrip(",") for line in lines] == [
        "caching: 1/2 batches",
        "caching: 2/2 batches, loss 0.5",
    ]
