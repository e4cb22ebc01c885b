"""The TPU plan table of docs/tpu.md: every recipe on its slice, compiled ahead of time by `launch/aot.py`.

    python launch/aot.py --table [--table_reports DIR]

Each row is compiled in its own process, one after the other (a ViT-G step needs about 6 GiB of host memory and
ten minutes on two cores), and the table between the markers of docs/tpu.md is rewritten. Rows whose config file
does not exist yet are left out. With `--table_reports DIR` each row's JSON report is kept in DIR and a row whose
report is already there is not compiled again, so an interrupted regeneration resumes where it stopped.
"""

import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "tpu.md"
BEGIN, END = "<!-- aot-table: begin -->", "<!-- aot-table: end -->"

# (config, topology, extra --config overrides): the slice and batch each recipe is planned for. The students need a
# frozen feature model's path (never read: compiling needs its shape only).
ROWS = (
    ("configs/teacher_g.py", "v5p:2x2x2", ()),
    ("configs/teacher_s.py", "v5p:2x2x1", ()),
    ("configs/student_g.py", "v5p:4x4x2", ("--config.model.dinov2_init=/models/dinov2_vitg14_pretrain.pth",)),
    ("configs/student_l.py", "v5p:4x4x1", ("--config.model.dinov2_init=/models/dinov2_vitl14_pretrain.pth",)),
    ("configs/student_b.py", "v5p:2x2x2", ("--config.model.dinov2_init=/models/dinov2_vitb14_pretrain.pth",)),
    ("configs/student_s.py", "v5p:2x2x1", ("--config.model.dinov2_init=/models/dinov2_vits14_pretrain.pth",)),
    ("configs/metric_hypersim_l.py", "v5p:2x2x1", ()),
    ("configs/metric_vkitti_l.py", "v5p:2x2x1", ()),
    ("configs/marigold_depth.py", "v5p:2x2x1", ()),
    ("configs/marigold_normals.py", "v5p:2x2x1", ()),
    ("configs/marigold_lcm.py", "v5p:2x2x1", ()),
)

HEADER = ("| config | slice | batch | sharding (mesh) | dtype, remat | HBM / chip (params, opt., act.) | step | MFU "
          "| MFU bound | img/s/chip | full schedule |\n|---|---|---|---|---|---|---|---|---|---|---|")


def run_row(config, topology, overrides):
    """The JSON report of `launch/aot.py` for one row (a failed compile is reported, not raised)."""
    command = [sys.executable, str(ROOT / "launch" / "aot.py"), "--config", str(ROOT / config), "--topology",
               topology, "--json", *overrides]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"launch/aot.py failed for {config} on {topology}:\n{done.stderr[-3000:]}")
    report = json.loads(lines[-1])
    report["config"] = config
    return report


def _gib(x):
    return "?" if x is None else f"{x:.1f}"


def format_row(r):
    mesh = "×".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
    memory = (f"**{_gib(r['hbm_gib'])}** / {r['hbm_budget_gib']:.0f} GiB ({_gib(r['params_gib'])}, "
              f"{_gib(r['optimizer_gib'])}, {_gib(r.get('activations_gib'))})")
    if not r["fits"]:
        memory += " does not fit"
    step = r.get("step_seconds")
    bound = f"{100 * r['mfu_cost_model']:.0f} %" if r.get("mfu_cost_model") else "—"
    timing = (f"{1e3 * step:.0f} ms | {100 * r['mfu']:.0f} % | {bound} | {r['images_per_second_per_chip']:.1f} | "
              f"{r['schedule_hours']:.1f} h") if step else "— | — | — | — | —"
    return (f"| `{Path(r['config']).stem}` | {r['topology']} ({r['chips']} chips) | {r['batch_size']} | "
            f"{r['sharding']} ({mesh}) | {r.get('dtype', '?')}, {r.get('remat', '?')} | {memory} | {timing} |")


def regenerate(rows=ROWS, doc=DOC, reports_dir=None):
    """Compile every row whose config exists and rewrite the table in `doc`; returns the reports.

    reports_dir: where each row's report is kept as JSON (and read back instead of compiling again), or None.
    """
    todo = [row for row in rows if (ROOT / row[0]).exists()]
    reports = []
    for config, topology, overrides in tqdm(todo, desc="AOT compiles", unit="config"):
        if reports_dir is None:
            reports.append(run_row(config, topology, overrides))
            continue
        kept = Path(reports_dir) / f"{Path(config).stem}_{topology.replace(':', '_')}.json"
        if not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(run_row(config, topology, overrides)))
        reports.append(json.loads(kept.read_text()))
    write_table(reports, doc)
    return reports


def write_table(reports, doc=DOC):
    """Replace the table between the markers of `doc` by one row per report (`launch/aot.py --json` objects)."""
    table = "\n".join([HEADER, *map(format_row, reports)])
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} lacks the markers {BEGIN} / {END} between which the table is written")
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1])
