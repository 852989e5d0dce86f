import numpy as np
import pytest

from sdcompress.cli.main import main
from sdcompress.estimator.lyapunov import block_bootstrap_dimension


def test_global_flag_before_subcommand_is_accepted(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["-q", "estimate", "--help"])
    assert exc.value.code == 0
    assert "sdcompress estimate" in capsys.readouterr().out


def test_unknown_model_is_one_line_and_nonzero(capsys, tmp_path):
    code = main(["./no-such-model", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("sdcompress: error:")
    assert not (tmp_path / "out").exists()


def test_block_bootstrap_without_replicates_gives_errors_but_no_interval():
    rng = np.random.default_rng(0)
    (low, high), stderr, blocks = block_bootstrap_dimension(rng.normal(size=(40, 3)) - 1, n_boot=0)
    assert np.isnan(low) and np.isnan(high) and blocks == 10
    assert np.all(np.isfinite(stderr)) and np.all(stderr > 0)
