"""Merge docs/readme/*.md into README.md between the SECTIONS markers (idempotent)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
ORDER = ["cache", "train", "export", "tune", "cluster", "data-performance"]
START, END = "<!-- SECTIONS -->", "<!-- /SECTIONS -->"

readme = (ROOT / "README.md").read_text()
parts = [(ROOT / "docs" / "readme" / f"{name}.md").read_text().strip() for name in ORDER
         if (ROOT / "docs" / "readme" / f"{name}.md").exists()]
body = "\n\n".join(parts)
if END in readme:
    readme = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n\n" + body + "\n\n" + END,
                    readme, flags=re.S)
else:
    readme = readme.replace(START, START + "\n\n" + body + "\n\n" + END)
(ROOT / "README.md").write_text(readme)
print(f"merged {len(parts)} sections")
