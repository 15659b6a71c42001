from click.testing import CliRunner

from butd.cli import main


def test_demo_runs_end_to_end(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--images", "24"])
    assert r.exit_code == 0, r.output
    assert "demo finished" in r.output
    assert (tmp_path / "demo" / "features" / "toy-oracle" / "manifest.json").exists()
