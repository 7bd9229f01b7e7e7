"""The error policy: what a user can cause is a UserError (or OSError) and ends the commands with exit status 2 and
one ``error:`` line; anything else is a bug and keeps its traceback."""

import pytest

from gsva.cli import main as gsva_main
from gsva.errors import InputError, UserError, report_user_errors


def _raise(exc):
    def run():
        raise exc
    return run


def test_user_errors_become_one_line_and_status_2_and_bugs_propagate(capsys):
    assert report_user_errors(_raise(InputError("size 'x' is not a size"))) == 2
    assert capsys.readouterr().err == "error: size 'x' is not a size\n"
    assert report_user_errors(_raise(FileNotFoundError(2, "No such file", "a.png"))) == 2
    with pytest.raises(KeyError):
        report_user_errors(_raise(KeyError("a bug")))
    with pytest.raises(ValueError):  # a plain ValueError is a bug, not bad input
        report_user_errors(_raise(ValueError("a bug")))


def test_every_error_class_of_bad_input_is_a_user_error():
    from gsva.base_models import BaseModelError
    from gsva.checkpoint import CheckpointError
    from gsva.config import ConfigError
    from gsva.conversation import PromptTooLongError
    from gsva.data.mixture import MixtureError
    from gsva.data.refer import AnnotationError
    from gsva.data.safe_pickle import UnsafePickleError
    from gsva.images import ImageError
    from gsva.inference import QuestionError
    from gsva.legacy_tokenization import LegacyTokenizerError
    from gsva.scoring import PredictionError
    from gsva.tokens import TokenizerError

    for cls in (BaseModelError, CheckpointError, ConfigError, PromptTooLongError, MixtureError, AnnotationError,
                UnsafePickleError, ImageError, QuestionError, LegacyTokenizerError, PredictionError, TokenizerError,
                InputError):
        assert issubclass(cls, UserError), cls


def test_train_and_eval_subcommands_report_bad_input_in_one_line(tmp_path, capsys):
    assert gsva_main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read recipe") and err.count("\n") == 1
    (tmp_path / "r.yaml").write_text("model: gsva-tiny\nlerning_rate: 1\n")
    assert gsva_main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    assert "lerning_rate" in capsys.readouterr().err
    assert gsva_main(["eval", "--dataset", "grefcoco", "--data-root", str(tmp_path / "absent"), "--split", "val",
                      "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "absent" in err
    (tmp_path / "p.jsonl").write_text("")
    assert gsva_main(["score", "--predictions", str(tmp_path / "p.jsonl"), "--scorer", "nope"]) == 2
    assert "unknown scorer(s) nope" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text('{"dataset": "grefc')  # a run killed while writing it
    assert gsva_main(["score", "--predictions", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "metrics.json" in err and err.count("\n") == 1
