import sdcompress


def test_every_public_name_resolves():
    missing = [n for n in sdcompress.__all__ if n != "__version__" and getattr(sdcompress, n, None) is None]
    assert not missing, f"exported but not importable: {missing}"


def test_core_api_is_callable():
    assert sdcompress.sharpness_dimension([1.0, -0.5, -2.0]) == 2.25
    for name in ("estimate_sd", "lyapunov_spectrum", "compress_", "run_pipeline", "load_model", "train_sgd"):
        assert callable(getattr(sdcompress, name)), name
