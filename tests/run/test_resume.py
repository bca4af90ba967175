"""Runs never rewrite their history (issue: records): a resume takes the run folder's saved
config as its base, may change only the keys declared ``resumable``, is refused (one line,
naming each key with both values) for any other change before anything is written, and is
recorded in the run folder's config_history.jsonl while config.yaml stays as the run began."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import REPO

from igam.errors import ConfigError
from igam.run import schemas
from igam.run.config import load_config, save_config
from igam.run.rundir import CONFIG_NAME, HISTORY_NAME, prepare_run_dir

TINY = ["--student.widths", "4,4,8,16", "--student.units_per_stage", "1"]


def _started_run(tmp_path: Path, *args: str, checkpoint: bool = True) -> Path:
    """A run folder as train_igam.py leaves it after its first checkpoint."""
    run = tmp_path / "run"
    cfg = load_config(schemas.IGAM_SCHEMA, ["--model_dir", str(run), *TINY, *args])
    prepare_run_dir(run, cfg)
    if checkpoint:
        (run / "checkpoint.pt").write_bytes(b"a checkpoint")
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_resume_alone_continues_from_the_run_config(tmp_path):
    run = _started_run(tmp_path, "--igam.beta", "2", "--data.num_classes", "5")
    cfg = load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run)])
    assert cfg["student"]["widths"] == [4, 4, 8, 16] and cfg["igam"]["beta"] == 2.0
    assert cfg["resume"] is True


def test_run_started_with_overwrite_resumes_alone(tmp_path):
    """--overwrite is how a run was started, not its config: the saved overwrite: true must
    not make --resume --model_dir DIR contradict itself (nor the continue command that a
    SIGTERM prints)."""
    run = _started_run(tmp_path, "--overwrite")
    cfg = load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run)])
    assert cfg["resume"] is True and cfg["overwrite"] is False
    assert prepare_run_dir(run, cfg, resume=True).resume_from == run / "checkpoint.pt"


def test_changed_key_is_refused_naming_old_and_new(tmp_path):
    run = _started_run(tmp_path)
    before = _files(run)
    with pytest.raises(ConfigError) as err:
        load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run),
                                          "--igam.beta", "2", "--train.batch_size", "8"])
    message = str(err.value)
    assert "\n" not in message
    assert "igam.beta 5.0 -> 2.0" in message and "train.batch_size 32 -> 8" in message
    assert str(run / CONFIG_NAME) in message
    assert _files(run) == before


def test_config_file_of_another_pair_is_refused_not_a_shape_error(tmp_path):
    run = _started_run(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.dataset 'cifar10' -> 'cifar100'"):
        load_config(schemas.IGAM_SCHEMA, [
            "--config", str(REPO / "configs/igam_cifar10_to_cifar100.yaml"),
            "--resume", "--model_dir", str(run)])


def test_config_file_of_the_same_pair_resumes(tmp_path):
    run = _started_run(tmp_path)
    cfg = load_config(schemas.IGAM_SCHEMA, [
        "--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"),
        "--resume", "--model_dir", str(run)])
    assert cfg["student"]["widths"] == [4, 4, 8, 16]


def test_resumable_keys_may_change_and_are_recorded(tmp_path):
    run = _started_run(tmp_path)
    config_before = (run / CONFIG_NAME).read_bytes()
    argv = ["--resume", "--model_dir", str(run), "--train.steps", "400000", "--log_every", "7",
            "--device", "cpu", "--eval.num_examples", "100"]
    cfg = load_config(schemas.IGAM_SCHEMA, argv)
    assert cfg["train"]["steps"] == 400000
    prepared = prepare_run_dir(run, cfg, resume=True)
    assert prepared.resume_from == run / "checkpoint.pt"
    assert (run / CONFIG_NAME).read_bytes() == config_before
    history = [json.loads(line) for line in (run / HISTORY_NAME).read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changes"] == {"resume": [False, True], "log_every": [100, 7],
                                     "train.steps": [320000, 400000], "device": ["auto", "cpu"],
                                     "eval.num_examples": [0, 100]}


def test_class_count_and_saved_list_are_the_same_selection(tmp_path):
    run = _started_run(tmp_path, "--data.num_classes", "5")
    cfg = load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run)])
    # as train_igam.py saves it: the resolved list (engine.load_train_test)
    cfg["data"].update(classes=[0, 1, 2, 3, 4], num_classes=0)
    save_config(cfg, run / CONFIG_NAME)
    again = load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run),
                                              "--data.num_classes", "5"])
    assert again["data"]["classes"] == [0, 1, 2, 3, 4] and again["data"]["num_classes"] == 0
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run),
                                          "--data.classes", "5,6,7,8,9"])


def test_folder_without_checkpoint_starts_afresh_with_any_change(tmp_path):
    run = _started_run(tmp_path, checkpoint=False)
    cfg = load_config(schemas.IGAM_SCHEMA, ["--resume", "--model_dir", str(run),
                                            "--igam.beta", "2"])
    assert cfg["igam"]["beta"] == 2.0
    prepare_run_dir(run, cfg, resume=True)
    assert "beta: 2.0" in (run / CONFIG_NAME).read_text()


def test_every_training_schema_declares_what_may_change_on_resume():
    for schema in (schemas.ADVTRAIN_SCHEMA, schemas.FINETUNE_SCHEMA, schemas.IGAM_SCHEMA):
        assert {"resume", "model_dir", "log_every", "checkpoint_every", "device",
                "data.root"} <= set(schema.resumable)
        assert not {"seed", "data.dataset", "data.classes", "data.num_classes"} & set(
            schema.resumable)
