"""Names of what a trial reports with each epoch, for the code that reads the reports
(the trials tables, the Optuna study) without importing the training code."""

EPOCH = "epoch"
VAL_ACCURACY = "val_accuracy"
# Epochs of fine-tuning (phase 2) trained so far, 0 during the head phase: ASHA's time
# unit. The head phase trains the same head on the same frozen features whatever the
# fine-tuning rate, so its epochs rank nothing the search decides.
FINETUNE_EPOCH = "finetune_epoch"
# The epochs the trial would run unstopped: a trial ended before them was stopped early.
PLANNED_EPOCHS = "planned_epochs"
# 1 for a trial trained in one go, one more each time it resumed from a checkpoint (a
# worker or trial restarted after a failure, a resumed search). A restart before the
# first checkpoint starts over at 1.
ATTEMPT = "attempt"
# True on the epoch where the trial's training loss diverged (trainables.divergence): the
# trial trained no further and ended as a result, not an error.
DIVERGED = "diverged"
# How many times the trial resumed from a checkpoint taken on a reclaim notice
# (trainables.preemption): each such restart also counts in ATTEMPT.
PREEMPTIONS = "preemptions"
# The step of the epoch a trial resumed at after a reclaim notice (0: the epoch trained
# from its start in this attempt): the steps before it were trained by the attempt that
# got the notice.
RESUMED_AT_STEP = "resumed_at_step"
# Set only in the report of a mid-epoch checkpoint (the steps of the epoch it holds):
# such a report stores the checkpoint and is not an epoch's result.
MID_EPOCH_STEP = "mid_epoch_step"
