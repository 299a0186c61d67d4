import numpy as np
import pytest

from naraim.infra.schedules import cosine_schedule, naraim_schedule


def test_naraim_schedule_warmup_decay_cooldown():
    peak, total, warm, cool = 1e-3, 1000, 100, 200
    lr = naraim_schedule(peak, total, warm, 0.1, cool)
    assert float(lr(0)) == 0.0
    assert float(lr(50)) == pytest.approx(peak / 2)
    assert float(lr(warm)) == pytest.approx(peak)
    # exponential decay: lr = peak * 0.1 ** ((t - warm) / (total - warm)), halfway through -> peak * 0.1 **
    # 0.5
    mid = warm + (total - warm) // 2
    assert float(lr(mid)) == pytest.approx(peak * 0.1**0.5, rel=1e-5)
    start = total - cool
    at_start = peak * 0.1 ** ((start - warm) / (total - warm))
    assert float(lr(start)) == pytest.approx(at_start, rel=1e-5)
    # linear cooldown on top of the decay: half-way through the cooldown the decayed lr is halved
    t = start + cool // 2
    assert float(lr(t)) == pytest.approx(peak * 0.1 ** ((t - warm) / (total - warm)) * 0.5, rel=1e-5)
    assert float(lr(total)) == 0.0
    values = np.array([float(lr(t)) for t in range(warm, total + 1, 10)])
    assert np.all(np.diff(values) <= 1e-12)


def test_cosine_schedule():
    lr = cosine_schedule(1.0, 100, 10, end_lr=0.1)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(1.0)
    assert float(lr(55)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-4)
    assert float(lr(100)) == pytest.approx(0.1)
