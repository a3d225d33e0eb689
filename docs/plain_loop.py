import torch

from neve_tune import NeuralVelocity, NeVe, gaussian_probe

torch.manual_seed(0)
x = torch.randn(512, 20)                        # your data
y = (x[:, :2].sum(1) > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
neve = NeVe(optimizer, NeuralVelocity(model, gaussian_probe((20,), 100, seed=0)), threshold=1e-2)
neve.start()                                    # epoch 0: the probe's reference outputs
while not neve.should_stop:
    total = 0.0
    for xb, yb in zip(x.split(64), y.split(64)):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    metrics = neve.step(train_loss=total / 8)   # measure, decay the LR, decide
print(neve.stopped_by, metrics["epoch"], round(metrics["velocity"], 4))
