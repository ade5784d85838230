"""The README's two set-up commands, .ci/run and the examples stay in step."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(path: str, *args: str) -> subprocess.CompletedProcess:
    """Run an example or benchmark script as a user would, with this Python."""
    return subprocess.run([sys.executable, str(ROOT / path), *args], capture_output=True, text=True, timeout=600)


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def test_readme_has_exactly_two_setup_commands_using_the_constraints():
    commands = _readme_commands()
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command and "pip install -c constraints.txt" in command
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = _readme_commands()[1].rsplit(" && ", 1)
    assert install in ci
    assert re.search(rf"^{re.escape(test)}$", ci, flags=re.M)


def test_example_runs_as_written(tmp_path):
    out = tmp_path / "kp.png"
    result = run_script("examples/count_keypoints.py", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "astronaut:" in result.stdout and out.stat().st_size > 10_000


def test_benchmark_quick_mode_prints_the_ratios():
    pytest.importorskip("cv2")
    result = run_script("benchmarks/keypoints.py", "--quick")
    assert result.returncode == 0, result.stderr
    rho = {
        backend: float(
            re.search(rf"FIDELITY photos.*, {backend} vs OpenCV: median Spearman rho ([\d.]+)", result.stdout)[1]
        )
        for backend in ("lowe", "kornia")
    }
    assert rho["lowe"] >= 0.95 and rho["kornia"] >= 0.8
    speed = re.findall(r"SPEED (\d+) thread\(s\), one 224-px photo \(batch 1\): OpenCV \d+ ms; lowe \d+ ms, RATIO "
                       r"[\d.]+; kornia \d+ ms, RATIO [\d.]+", result.stdout)  # fmt: skip
    assert speed[-1] == "1" and len(speed) == len(set(speed)) >= 1


def test_analysis_benchmark_quick_mode_prints_ratio_and_memory():
    result = run_script("benchmarks/analysis.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert re.search(r"RATIO analysis / forward time \[vit_tiny_patch16_224\]: [\d.]+", result.stdout)
    for family in ("timm", "torchvision", "hf"):
        assert re.search(rf"RATIO analysis / forward time \[family {family}, .*\]: [\d.]+", result.stdout)
    assert re.search(r"MEMORY extra peak of the analysis \[vit_tiny_patch16_224\]: -?[\d.]+ MiB", result.stdout)


def test_analysis_example_runs_as_written(tmp_path):
    result = run_script("examples/analyze_vit.py", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    names = {"interrelation.png", "focus_index.png", "stages.png", "heatmaps.png", "report.json", "per_layer_head.csv"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    assert "stages:" in result.stdout


def test_captum_quickstart_runs_as_written(tmp_path):
    out = tmp_path / "qs.png"
    result = run_script("examples/captum_quickstart.py", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Spearman rho(theta, FeatureAblation)" in result.stdout and out.stat().st_size > 10_000


def test_attribution_benchmark_quick_mode():
    result = run_script("benchmarks/attribution.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert re.search(r"RATIO SIFTInterrelation / forward: [\d.]+", result.stdout)
    assert re.search(r"ONE THREAD IN A ROW RATIO AttentionRollout / forward: [\d.]+", result.stdout)
    assert re.search(r"ONE THREAD RATIO GradientRollout / forward: [\d.]+", result.stdout)
    assert re.search(r"ONE THREAD RATIO AttnLRP / forward: [\d.]+", result.stdout)
    assert re.search(r"MEMORY AttnLRP \(target\): \d+ MB = [\d.]+ plain forwards", result.stdout)


def test_bottom_prompt_fills_example_runs_as_written():
    result = run_script("examples/bottom_prompt_fills.py", "--quick")
    assert result.returncode == 0, result.stderr
    for fill in ("0.0", "mean", "blur", "drop"):
        assert f"fill {fill}: unmasked" in result.stdout
    assert "| spurious |" in result.stdout


def test_shortcut_benchmark_quick_mode(tmp_path):
    result = run_script("examples/shortcut_benchmark.py", "--quick", "--cache", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "decorrelated_test_accuracy" in result.stdout and "oracle (mask the marker)" in result.stdout
    assert "θ spurious" in result.stdout
    assert "localisation of the marker, 4 decorrelated test images" in result.stdout
    for metric in ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection", "road"):
        assert f"{metric} (higher is better)" in result.stdout


def test_keypoint_benchmark_prints_the_one_thread_table():
    pytest.importorskip("cv2")
    result = run_script("benchmarks/keypoints.py", "--quick")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"ONE THREAD (.+?): lowe \d+ ms, OpenCV \d+ ms, RATIO ([\d.]+)", result.stdout)
    assert [name.split(",")[0] for name, _ in rows] == [
        "embedded Fashion-MNIST",
        "photos",
        "one 224-px photo (batch 1)",
        "photos at 448 px",
    ]
