"""Bad input gives one clear line on stderr and exit status 2 (no traceback)."""

import pytest
from train_cli import TINY, one_line_error, run_cli


@pytest.mark.parametrize("args, msg", [
    (["--data", "/nonexistent/path"], "data path not found"),
    (["nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["--config", "nosuchconfig"], "unknown config"),
    (["batch_size=6", "grad_accum=4"], "not divisible by grad_accum"),
    (["profile_steps=5"], "profile_steps must look like START:END"),
    (["profile_steps=3:2"], "profile_steps needs 0 < START < END"),
])
def test_bad_input(tmp_path, args, msg):
    p = run_cli(["train", "--out", str(tmp_path / "o"), *TINY, *args], check=False)
    assert msg in one_line_error(p)


def test_empty_corpus(tmp_path):
    (tmp_path / "empty").mkdir()
    p = run_cli(["train", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "empty"), *TINY], check=False)
    assert "empty corpus" in one_line_error(p)


def test_batch_not_divisible_by_data_parallel(tmp_path):
    p = run_cli(["train", "--out", str(tmp_path / "o"), *TINY, "batch_size=4"], check=False,
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert "not divisible by the data-parallel size 8" in one_line_error(p)


def test_compile_cache_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    p = run_cli(["train", "--out", str(tmp_path / "o"), *TINY, f"compile_cache={tmp_path / 'file'}"], check=False)
    assert "compile_cache: cannot create" in one_line_error(p)
