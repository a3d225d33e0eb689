import lightning.pytorch as pl
import torch

from neve_tune.lightning import NeVeCallback


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss, on_epoch=True)  # NeVeCallback reads the epoch's training loss
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :2].sum(1) > 0).long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
# stops on V / peak V < 1e-2, on the guard or on a stall; its probe: Gaussian inputs
neve = NeVeCallback(num_classes=2, verbose=True)
trainer = pl.Trainer(max_epochs=100, callbacks=[neve], logger=False, enable_checkpointing=False)
trainer.fit(Net(), loader)
print(neve.stopped_by, len(neve.history), round(neve.velocities[-1], 4))
