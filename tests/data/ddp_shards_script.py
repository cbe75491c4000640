"""Run by tests/data/test_shards_ddp.py as a script: 2-process DDP pretraining (gloo, CPU) reading tar
shards of unequal sizes; every rank saves the (epoch, sample indices) of each batch it trained on."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_PRETRAIN  # noqa: E402

from mcl.config import load_config, to_dict  # noqa: E402
from mcl.engine.trainer import build_trainer  # noqa: E402
from mcl.methods.mcl import (
    MCLConfig,  # noqa: E402
    MCLPretrainModule,  # noqa: E402
)


class RecordBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.current_epoch, batch["index"].tolist()))


def main(shards: str, out_dir: str, steps: int) -> None:
    overrides = TINY_PRETRAIN + [f"trainer.out={out_dir}", "trainer.devices=2", "trainer.strategy=ddp",
                                 f"trainer.max_steps={steps}", "data.batch_size=32", "data.num_workers=1",
                                 f"data.source={shards}", "data.shard_shuffle_buffer=4",
                                 "trainer.checkpoint_every_steps=1000"]
    cfg = load_config(MCLConfig, None, overrides)
    module = MCLPretrainModule(to_dict(cfg))
    recorder = RecordBatches()
    trainer = build_trainer(cfg, Path(out_dir), extra_callbacks=[recorder])
    trainer.fit(module, datamodule=MCLPretrainModule.datamodule(cfg))
    dataset = trainer.datamodule.dataset
    torch.save({"batches": recorder.batches, "world": trainer.world_size, "dataset_len": len(dataset),
                "loader_len": len(trainer.train_dataloader), "steps_per_epoch": module.steps_per_epoch(),
                "offsets": dataset.offsets, "sizes": [s.samples for s in dataset.shards.shards]},
               os.path.join(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
