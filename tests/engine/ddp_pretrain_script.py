"""Run by tests/engine/test_engine_ddp.py as a script: 2-process DDP pretraining on the CPU (gloo), then every rank
saves its parameters, EMA target and the data indices it saw, for the test to compare."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))   # tests/, for conftest
from conftest import TINY_PRETRAIN  # noqa: E402

from mcl.config import load_config, to_dict  # noqa: E402
from mcl.engine.trainer import build_trainer  # noqa: E402
from mcl.methods.mcl import (
    MCLConfig,  # noqa: E402
    MCLPretrainModule,  # noqa: E402
)


class RecordIndices(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(batch["index"].tolist())


def main(out_dir: str, steps: int) -> None:
    overrides = TINY_PRETRAIN + [f"trainer.out={out_dir}", "trainer.devices=2", "trainer.strategy=ddp",
                                 f"trainer.max_steps={steps}", "data.synthetic_num=128", "data.batch_size=32",
                                 "trainer.checkpoint_every_steps=1000"]
    cfg = load_config(MCLConfig, None, overrides)
    module = MCLPretrainModule(to_dict(cfg))
    recorder = RecordIndices()
    trainer = build_trainer(cfg, __import__("pathlib").Path(out_dir), extra_callbacks=[recorder])
    trainer.fit(module, datamodule=MCLPretrainModule.datamodule(cfg))
    rank = trainer.global_rank
    sync = any(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
    torch.save({"state": {k: v.detach().cpu() for k, v in module.model.state_dict().items()},
                "seen": recorder.seen, "world": trainer.world_size, "sync_bn": sync,
                "dataset_len": len(trainer.datamodule.dataset)},
               os.path.join(out_dir, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
