"""Fine-tuning either model family into a classifier: the second stage of the Audio-MAE
authors' recipe (facebookresearch/AudioMAE), also applied to MW-MAE encoders.

    data.py      labelled audio: HEAR task folders, the authors' JSON, CSV, class folders
    recipes.py   FinetuneConfig and the named recipes (the authors' AS-2M, AS-20K, ESC-50; cpu-small)
    dataset.py   augmented training examples (mixup, gain, SpecAugment, masking noise, drop-path draws)
    model.py     the model built from a checkpoint, layer-decay parameter groups, the loss
    metrics.py   mAP, ROC-AUC, d', top-1 accuracy
    evaluate.py  scoring a split through the HEAR runtime's chunks (what get_logits does)
    trainer.py   `finetune()` on the shared training loop (hear_mwmae.pretrain.loop)
    cli.py       `hear-mwmae finetune`
"""
