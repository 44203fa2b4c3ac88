"""`l0 serve` refuses a bad L0 configuration before vLLM starts loading."""
import subprocess
import sys


def test_bad_config_exits_2_with_the_reason(tmp_path):
    bad = tmp_path / "l0.yaml"
    bad.write_text("l0:\n  detector:\n    near_threshold: 2\n")
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "some/model", "--l0-config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "l0_near_threshold=2.0 is out of range" in proc.stderr


def test_bad_action_is_rejected_by_argparse():
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", "--l0-action", "explode"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'explode'" in proc.stderr


def test_bad_store_url_exits_2_without_echoing_the_password():
    proc = subprocess.run([sys.executable, "-m", "l0.cli", "serve", "m", "--l0-store", "mysql://u:hunter2@h/db"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "must be off or a sqlite://" in proc.stderr
    assert "hunter2" not in proc.stderr
