import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from neve_tune.hf import NeVeTrainerCallback

torch.manual_seed(0)
ids = torch.randint(0, 50, (128, 8))
labels = (ids[:, 0] < 25).long()
train_set = [{"input_ids": i, "labels": label} for i, label in zip(ids, labels)]
config = BertConfig(
    vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
)
model = BertForSequenceClassification(config)
# stops on V / peak V < 1e-2; its probe: random token ids
neve = NeVeTrainerCallback(num_classes=2, verbose=True)
args = TrainingArguments(
    "runs/hf",
    num_train_epochs=30,
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    per_device_train_batch_size=32,
    logging_steps=4,
    save_strategy="no",
    report_to=[],
)
Trainer(model=model, args=args, train_dataset=train_set, callbacks=[neve]).train()
print(neve.stopped_by, len(neve.history), round(neve.velocities[-1], 4))
