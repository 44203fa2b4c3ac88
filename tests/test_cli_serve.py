"""`l0 serve` refuses a bad L0 configuration before vLLM starts loading."""
import subprocess
import sys


def test_bad_config_exits_2_with_the_reason_and_leaves_no_status_directory(tmp_path):
    import os
    bad = tmp_path / "l0.yaml"
    bad.write_text("l0:\n  detector:\n    near_threshold: 2\n")
    temp = tmp_path / "temp"
    temp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "some/model", "--l0-config", str(bad)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, TMPDIR=str(temp)))
    assert proc.returncode == 2
    assert "l0_near_threshold=2.0 is out of range" in proc.stderr
    assert list(temp.iterdir()) == []


def test_bad_action_is_rejected_by_argparse():
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", "--l0-action", "explode"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'explode'" in proc.stderr


def test_bad_store_url_exits_2_without_echoing_the_password():
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", "--l0-store", "mysql://u:hunter2@h/db"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be off or a sqlite://" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_speculative_decoding_is_refused_before_vllm_loads_under_the_v1_runner():
    """vLLM's V1 runner runs no custom logits processor under speculative
    decoding: L0 could not work, so `l0 serve` says so at once (vLLM itself
    would fail only after loading the model). This host has no GPU: V1."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "VLLM_USE_V2_MODEL_RUNNER"}
    for flag in (["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}'],
                 ['--speculative-config={"method": "ngram"}']):
        proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", *flag],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 2
        assert "speculative decoding (--speculative-config) is not supported under vLLM's V1" in proc.stderr


def test_speculative_decoding_goes_through_where_model_runner_v2_serves():
    from l0.cli import speculative_refusal
    args = ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2}']
    assert speculative_refusal(args, {"VLLM_USE_V2_MODEL_RUNNER": "1"}) is None
    assert "V1 model runner" in speculative_refusal(args, {"VLLM_USE_V2_MODEL_RUNNER": "0"})
    assert speculative_refusal(["--max-num-seqs", "4"], {"VLLM_USE_V2_MODEL_RUNNER": "0"}) is None


def test_config_files_that_cannot_be_read_or_parsed_exit_2(tmp_path):
    for name, text, says in [("missing.yaml", None, "cannot read config"),
                             ("broken.yaml", "l0: [", "is not valid YAML"),
                             ("typed.yaml", "l0:\n  penalty: null\n", "penalty=None must be a number"),
                             ("list.yaml", "- 1\n", "must be a mapping")]:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", "--l0-config", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
