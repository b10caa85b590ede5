"""What a plain install (a wheel, not this checkout) holds: the files `kt-pipeline demo` reads."""

import pathlib
import subprocess
import sys
import zipfile

from kt_pipeline.commands import demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_holds_the_demo_config_and_sample(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("kt_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (demo.DEMO_CONFIG, demo.SAMPLE):
        inside = path.relative_to(demo.PACKAGE.parent).as_posix()
        assert inside in names, f"{inside} is not in {wheel.name}: a plain install lacks it"
