"""What the training loop yields and what a finished run reports: `StepEvent`, `EvalEvent` (`EpochEvent`),
`Summary`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class StepEvent:
    """After one optimizer step. `losses` (and `learning_rate`) are set at log points: the losses of the steps
    since the previous one. `state` is valid until the next step (the step donates it)."""

    step: int
    epoch: int  # 0-based, the epoch this step belongs to
    batch: int  # batches of that epoch done
    epoch_progress: float  # epochs done, fractional
    rows: int  # rows of the batch: the batch size, or its packed rows (`data.pack_length`)
    seq: int  # padded length of the batch (its row length when packed)
    tokens: int  # real (unpadded) tokens of the batch
    state: dict
    losses: list[float] | None = None
    learning_rate: float | None = None


@dataclass(frozen=True)
class EvalEvent:
    """After an evaluation on the validation split: every `train.eval_every` steps within an epoch, and after
    every epoch (`EpochEvent`, whose loop state already points at the next epoch)."""

    epoch: float  # epochs done, fractional within an epoch
    step: int
    scores: dict  # the metrics.jsonl eval row: epoch, step, train_loss, seqeval scores with per_type
    improved: bool  # best validation F1 so far
    state: dict
    stop: bool = False  # train.patience evaluations in a row without improvement: the loop ends after this one


@dataclass(frozen=True)
class EpochEvent(EvalEvent):
    """The evaluation after an epoch."""


@dataclass
class Summary:
    """What a finished run reports; `to_json` is summary.json."""

    run_dir: str
    steps: int
    history: list[dict]
    best_f1: float
    loss_norm: str
    buckets: list[int]
    compiled_train_shapes: list  # padded lengths; packed rows (data.pack_length): [rows, row length] pairs
    xla_compiles: int
    compile_s: float
    compile_workers: int
    compiled_ahead: int
    devices: int
    load_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    compile_wait_train_s: float = 0.0
    compile_wait_eval_s: float = 0.0
    test: dict | None = None
    total_s: float = 0.0
    best_step: int = 0  # the evaluation whose model was exported (model/) and scored on test
    best_per_type: dict = dataclasses.field(default_factory=dict)  # its validation scores per entity type
    stopped_early: bool = False  # train.patience ended the run
    labels: list[str] = dataclasses.field(default_factory=list)  # the label inventory, in id order
    train_sentences: int = 0  # sentences the train split held (after data.limit)
    # The card's sample sentences of the validation split: index, tokens, gold_tags and the exported model's pred_tags.
    samples: list[dict] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        if out["test"] is None:
            del out["test"]
        return out

    @classmethod
    def from_json(cls, d: dict) -> Summary:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def __getitem__(self, key: str):
        """summary.json's keys, for code that reads a summary as the JSON (`summary["run_dir"]`)."""
        return self.to_json()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_json()
