import numpy as np
import pytest

from naraim.data.config import default_data_config
from naraim.data.orderings import to_raster
from naraim.data.pipeline import make_eval_iterator, make_train_iterator
from naraim.errors import UserError

P = 8


def _cfg(train_size=12, **kw):
    cfg = default_data_config()
    cfg.image_size, cfg.max_tokens = 32, 16
    cfg.read_threads = 1
    cfg.synthetic.min_side, cfg.synthetic.max_side = 16, 64
    cfg.synthetic.train_size = train_size
    cfg.synthetic.validation_size = 10
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _train(cfg, batch=4, seed=0, **kw):
    return make_train_iterator(cfg, patch_size=P, global_batch_size=batch, seed=seed, **kw)


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _ids(batch):
    """An identity per example: label, aspect ratio, length and pixel sum (unique for these images)."""
    keys = zip(
        batch["label"], batch["aspect_ratio"], batch["length"], batch["patches"].sum(axis=(1, 2)), strict=True
    )
    return [(int(label), round(float(a), 5), int(n), int(s)) for label, a, n, s in keys]


def test_batch_contract():
    b = next(_train(_cfg()))
    expected = {
        "patches": (np.uint8, (4, 16, P * P * 3)),
        "coords": (np.int32, (4, 16, 2)),
        "grid": (np.int32, (4, 2)),
        "length": (np.int32, (4,)),
        "label": (np.int32, (4,)),
        "aspect_ratio": (np.float32, (4,)),
    }
    assert {k: (v.dtype.type, v.shape) for k, v in b.items()} == expected
    for i in range(4):
        n = int(b["length"][i])
        assert 1 <= n == b["grid"][i].prod() <= 16
        assert (b["patches"][i, n:] == 0).all() and (b["coords"][i, n:] == 0).all()
        assert tuple(b["coords"][i, n - 1]) == tuple(b["grid"][i] - 1)


def test_training_is_deterministic_and_seeded():
    cfg = _cfg()
    a, b, c = _train(cfg, seed=3), _train(cfg, seed=3), _train(cfg, seed=4)
    xs, ys, zs = [next(a) for _ in range(4)], [next(b) for _ in range(4)], [next(c) for _ in range(4)]
    assert all(_same(x, y) for x, y in zip(xs, ys, strict=True))
    assert not all(_same(x, z) for x, z in zip(xs, zs, strict=True))


def test_each_epoch_visits_every_example_once_in_a_new_order():
    it = _train(_cfg(train_size=8), batch=4)
    epochs = [[e for _ in range(2) for e in _ids(next(it))] for _ in range(3)]
    assert len(set(epochs[0])) == 8
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


@pytest.mark.parametrize("num_workers", [0, pytest.param(1, marks=pytest.mark.slow)])  # 1: a worker process
def test_state_restore_mid_epoch_gives_identical_batches(num_workers):
    cfg = _cfg(train_size=10, num_workers=num_workers)
    it = _train(cfg, batch=4)
    for _ in range(3):  # crosses the first epoch boundary (10 examples, batches of 4)
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = _train(cfg, batch=4)
    fresh.set_state(state)
    assert all(_same(e, next(fresh)) for e in expected)
    if num_workers:
        reference = _train(_cfg(train_size=10), batch=4)
        for _ in range(3):
            next(reference)
        assert _same(next(reference), expected[0])  # worker processes give the same stream


def test_processes_get_disjoint_shards():
    cfg = _cfg(train_size=8, shuffle=False)
    shards = []
    for p in range(2):
        it = _train(cfg, batch=4, process_index=p, process_count=2)
        shards.append([e for _ in range(2) for e in _ids(next(it))])
    assert len(shards[0]) == 4  # per-process batch = 4 / 2 processes
    every = [e for _ in range(2) for e in _ids(next(_train(cfg, batch=8)))]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(every)


def test_augmentation_follows_the_example_not_the_process():
    """Two processes, shuffled, with random crops and flips: per epoch they read disjoint halves of the split,
    and each example is augmented exactly as a single process augments it in that epoch (its rng comes from
    (seed, epoch, example index)), so the processes' random draws differ because their examples do."""
    cfg = _cfg(
        train_size=16, transforms=("random_crop_native", "native_aspect_ratio_resize", "horizontal_flip")
    )
    epochs = {}
    for name, processes in (("single", [(0, 1)]), ("two", [(0, 2), (1, 2)])):
        seen = [[], []]  # per epoch: the examples as bytes
        per_process = []
        for index, count in processes:
            it = _train(cfg, batch=4, process_index=index, process_count=count)
            mine = [[], []]
            for epoch in range(2):
                for _ in range(16 // 4):
                    b = next(it)
                    rows = [
                        b["patches"][i].tobytes() + b["coords"][i].tobytes() for i in range(len(b["label"]))
                    ]
                    mine[epoch] += rows
                seen[epoch] += mine[epoch]
            per_process.append(mine)
        epochs[name] = seen
        if name == "two":
            assert all(len(m[0]) == 8 for m in per_process)
            assert not set(per_process[0][0]) & set(per_process[1][0])
    for epoch in range(2):
        assert len(set(epochs["two"][epoch])) == 16
        assert sorted(epochs["two"][epoch]) == sorted(epochs["single"][epoch])
    assert set(epochs["single"][0]) != set(epochs["single"][1])  # new draws every epoch


@pytest.mark.parametrize("processes", [1, 2])
def test_eval_visits_each_example_exactly_once(processes):
    cfg = _cfg()
    runs = [
        list(
            make_eval_iterator(
                cfg,
                split="validation",
                patch_size=P,
                global_batch_size=4,
                process_index=p,
                process_count=processes,
            )
        )
        for p in range(processes)
    ]
    assert len({len(r) for r in runs}) == 1 and len(runs[0]) == 3  # ceil(10 / 4) batches on every process
    assert len(make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4)) == 3
    seen = [e for r in runs for b in r for e, v in zip(_ids(b), b["valid"], strict=True) if v]
    reference = [
        e
        for b in make_eval_iterator(_cfg(), split="validation", patch_size=P, global_batch_size=10)
        for e in _ids(b)
    ]
    assert sorted(seen) == sorted(reference) and len(seen) == 10
    last = runs[-1][-1]
    assert last["valid"].dtype == np.bool_ and not last["valid"].all()
    assert (last["label"][~last["valid"]] == -1).all() and (last["length"] >= 1).all()
    again = list(
        make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4, max_examples=5)
    )
    assert sum(int(b["valid"].sum()) for b in again) == 5


def test_eval_is_deterministic_and_unaugmented():
    cfg = _cfg(eval_transforms=("native_aspect_ratio_resize",))
    a = list(make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4))
    b = list(make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4))
    assert all(_same(x, y) for x, y in zip(a, b, strict=True))


def test_ordering_permutes_patches_with_their_coordinates():
    raster = next(_train(_cfg(max_tokens=64, image_size=64), batch=2))
    nested = next(_train(_cfg(max_tokens=64, image_size=64, ordering="nested_raster(2)"), batch=2))
    assert not np.array_equal(raster["patches"], nested["patches"])
    back = to_raster(nested["patches"], nested["coords"], nested["grid"], nested["length"])
    np.testing.assert_array_equal(back, raster["patches"])


def test_batch_not_divisible_by_processes_is_a_user_error():
    with pytest.raises(UserError, match="not a positive multiple"):
        _train(_cfg(), batch=5, process_index=0, process_count=2)


@pytest.mark.slow
def test_eval_with_worker_processes_gives_the_same_full_batches():
    cfg = _cfg()
    cfg.synthetic.validation_size = 11
    reference = list(make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4))
    cfg.num_workers = 2
    batches = make_eval_iterator(cfg, split="validation", patch_size=P, global_batch_size=4)
    for _ in range(2):  # re-iterable
        got = list(batches)
        assert len(got) == len(reference) == len(batches) == 3
        assert all(b["patches"].shape[0] == 4 and _same(b, r) for b, r in zip(got, reference, strict=True))
