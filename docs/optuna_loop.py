import optuna
import torch

from neve_tune import NeuralVelocity, NeVe, PredictionChanges, gaussian_probe
from neve_tune.optuna import NeVePruner, report_epoch


def objective(trial):
    torch.manual_seed(0)
    x = torch.randn(512, 20)                    # your data
    y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    neve = NeVe(
        optimizer,
        NeuralVelocity(model, gaussian_probe((20,), 100, seed=0)),
        threshold=1e-3,
        num_classes=2,
        pc_patience=3,                          # the memorisation guard
    )
    pc = PredictionChanges(len(x))              # its signal, from the training pass
    neve.start()
    while not neve.should_stop:
        total = 0.0
        for idx, xb, yb in zip(torch.arange(len(x)).split(64), x.split(64), y.split(64)):
            logits = model(xb)
            pc.update(idx, logits, yb)
            loss = torch.nn.functional.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        changes = pc.epoch_end()                # then pc.unfit, pc.class_fit: of this epoch
        metrics = neve.step(
            train_loss=total / 8, prediction_changes=changes, unfit=pc.unfit, class_fit=pc.class_fit
        )
        report_epoch(trial, metrics)            # the epoch's velocity, loss, flags -> the trial
        if trial.should_prune():                # diverged, stalled, or lost at a rung
            raise optuna.TrialPruned()
    return metrics["kept_train_loss"]           # of the weights kept (the guard may restore)


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(pruner=NeVePruner(), sampler=optuna.samplers.TPESampler(seed=0))
study.optimize(objective, n_trials=8)
print(study.best_params, round(study.best_value, 4), [t.state.name for t in study.trials])
