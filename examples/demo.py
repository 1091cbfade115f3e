"""`make demo`: generate synthetic pedestrians and check the data pipeline end to end.

(The training demo arrives with the model; this version checks the install and the data layer.)
"""

from __future__ import annotations

from icg.data import SyntheticDataModule

datamodule = SyntheticDataModule("data/synthetic-demo", num_train_ids=100, num_test_ids=100, num_workers=0)
datamodule.prepare_data()
print(datamodule.dataset)
batch = next(iter(datamodule.train_dataloader()))
print({name: tuple(value.shape) for name, value in batch.items()})
