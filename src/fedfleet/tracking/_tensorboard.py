"""TensorBoard: a scalar per round metric, a histogram of the per-client accuracies and losses
per federated evaluation, the config as text. Written with torch's ``SummaryWriter`` (the
``tensorboard`` package of the ``fedfleet[track]`` extra); ``tensorboard --logdir runs`` shows
every run side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedfleet.evaluation import ClientEvaluation
from fedfleet.tracking._base import (
    Closing,
    client_values,
    flatten_params,
    record_step,
    require,
    round_metrics,
)

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker(Closing):
    """Event files in ``log_dir``: scalars tagged by the record's keys (``test_accuracy``,
    ``train_loss``, ``dp_epsilon``, ``sim_time_s``, ...) at step = round; histograms
    ``client_accuracy`` and ``client_loss`` (and ``global_client_*`` for personalised models)
    at each federated evaluation; the config as the text ``config``.

    ``purge_step``: when resuming, the first round to be logged again; TensorBoard drops the
    earlier files' events from that step on, so a round a killed run logged is not shown twice.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        require("tensorboard", "track.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in flatten_params(params).items())
        self._writer.add_text("config", f"| key | value |\n|---|---|\n{rows}", 0)

    def log_round(self, record: Mapping[str, Any]) -> None:
        rnd = record_step(record)
        for key, value in round_metrics(record).items():
            self._writer.add_scalar(key, value, rnd)
        self._writer.flush()  # readable while the run goes on

    def log_evaluation(self, rnd: int, reports: Sequence[ClientEvaluation]) -> None:
        if not reports:
            return
        for key, values in client_values(reports).items():
            self._writer.add_histogram(key, values, rnd)

    def close(self, *, interrupted: bool = False) -> None:
        self._writer.close()
