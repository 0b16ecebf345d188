"""The sweep that chose the README demo (studies/demo_sweep.py): every candidate is a valid training
config, and a misspelt candidate is refused before any run."""

from __future__ import annotations

from conftest import run_script
from studies import demo_sweep


def test_candidates_are_valid_configs_and_unknown_names_are_refused(tmp_path):
    """Every candidate parses as a training config (settings checked before any run), keeps head_dim
    32, and a misspelt --only names the real candidates."""
    for name in demo_sweep.CANDIDATES:
        cfg = demo_sweep.candidate_config(name, 0, tmp_path)
        assert cfg.model.n_embd // cfg.model.n_head == 32 and cfg.compile and cfg.bpb_genres
        assert cfg.out_dir == str(tmp_path / name)
    bad = run_script("studies/demo_sweep.py", "--only=w256_l4,huge", f"--out_dir={tmp_path}", check=False)
    assert bad.returncode == 2 and "huge" in bad.stderr and "w256_l4" in bad.stderr
    assert not (tmp_path / "times.jsonl").exists()  # refused before any run
