import pytest
import torch

from sdcompress.data import BatchStream, load_data
from sdcompress.errors import ConfigError, DataError, OfflineError


def test_pydoc_split_is_by_topic_and_deterministic():
    a, b = load_data("pydoc", block_size=32), load_data("pydoc", block_size=32)
    assert torch.equal(a.train.tensors["input_ids"], b.train.tensors["input_ids"])
    assert a.info["train_topics"] > 0 and a.info["test_topics"] > 0
    assert a.train.tensors["input_ids"].shape[1] == 32
    assert int(a.train.tensors["input_ids"].max()) < a.info["vocab_size"]
    # no test block appears in train
    train_rows = {tuple(r.tolist()) for r in a.train.tensors["input_ids"][:500]}
    assert not any(tuple(r.tolist()) in train_rows for r in a.test.tensors["input_ids"][:500])


def test_digits_and_modular_shapes():
    d = load_data("digits")
    assert len(d.train) + len(d.test) == 1797 and d.train.tensors["inputs"].shape[1] == 64
    m = load_data("modular", p=11, train_fraction=0.4, seed=3)
    assert len(m.train) == round(0.4 * 121) and len(m.train) + len(m.test) == 121
    x, y = m.train.all()
    assert torch.equal(y, (x[:, 0] + x[:, 1]) % 11)


@pytest.mark.parametrize("replacement", [False, True])
def test_batch_stream_reproducible(replacement):
    data = load_data("digits").train
    s1 = BatchStream(data, 32, seed=7, replacement=replacement)
    s2 = BatchStream(data, 32, seed=7, replacement=replacement)
    s3 = BatchStream(data, 32, seed=8, replacement=replacement)
    for t in [0, 5, 60, 3]:  # random access, any order
        assert torch.equal(s1.indices(t), s2.indices(t))
    assert not torch.equal(s1.indices(0), s3.indices(0))
    if not replacement:  # an epoch is a permutation: no repeats
        idx = torch.cat([s1.indices(t) for t in range(s1.steps_per_epoch)])
        assert len(set(idx.tolist())) == len(idx)


def test_batch_stream_rejects_bad_batch_size():
    data = load_data("digits").train
    with pytest.raises(ConfigError, match="batch size"):
        BatchStream(data, len(data) + 1)


def test_local_text_and_csv_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world, this is a line of text\n" * 50)
    ds = load_data(str(tmp_path / "a.txt"), block_size=16)
    assert ds.task == "lm" and ds.train.tensors["input_ids"].shape[1] == 16
    csv = tmp_path / "d.csv"
    csv.write_text("x1,x2,label\n" + "\n".join(f"{i},{i * 2},{i % 2}" for i in range(40)))
    cl = load_data(str(csv))
    assert cl.task == "classification" and cl.info["n_classes"] == 2


def test_missing_path_and_offline_hub():
    with pytest.raises(DataError, match="does not exist"):
        load_data("./nope.txt")
    with pytest.raises(OfflineError, match="unreachable"):
        load_data("someone/some-dataset")
