import torch
from ray import tune

from neve_tune import NeuralVelocity, NeVe, gaussian_probe
from neve_tune.ray import NeVeStopper, report_epoch


def trainable(config):
    torch.manual_seed(0)
    x = torch.randn(512, 20)                    # your data
    y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    velocity = NeuralVelocity(model, gaussian_probe((20,), 100, seed=0))
    neve = NeVe(optimizer, velocity, threshold=1e-3, num_classes=2)
    neve.start()
    while not neve.should_stop:
        total = 0.0
        for xb, yb in zip(x.split(64), y.split(64)):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        # velocity, loss, neve_stop, stalled -> ray.tune.report
        report_epoch(neve.step(train_loss=total / 8))


stopper = NeVeStopper(num_classes=2)
results = tune.Tuner(
    trainable,
    param_space={"lr": tune.grid_search([1e-5, 0.5])},
    run_config=tune.RunConfig(stop=stopper, verbose=0),
).fit()
# each LR: what ended its trial, and after how many epochs
print({r.config["lr"]: (stopper.stopped_by(r.metrics["trial_id"]), r.metrics["training_iteration"])
       for r in results})
