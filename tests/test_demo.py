"""A seconds-long version of the README's main command: train, analyse, report, headline."""

from adaptertune.cli import main


def test_quick_demo_writes_a_report_that_names_an_elbow(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = (tmp_path / "report" / "report.md").read_text()
    assert "elbow found:" in out and "planted k* = 4" in out and f"report: {tmp_path / 'report' / 'report.md'}" in out
    assert "## Test accuracy" in report and "adapter-r4" in report and "| head |" in report
    assert "elbow" in report.lower() and "| elbow means |" in report and "(on the means, no curve: " in out
    for name in ("spectrum.json", "capacity.json", "significance.json", "report.json", "capacity.png"):
        assert (tmp_path / "report" / name).exists(), name
