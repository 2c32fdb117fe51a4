"""HEAR 2021 evaluation of hear_mwmae: the paper's ten-task table with one command.

    bash evaluation/install.sh                     # heareval + hearvalidator, torch kept
    python -m evaluation.run --tasks-dir TASKS --model CKPT [--grid paper] [--seeds 10]
    python -m evaluation.compare RUN_A RUN_B       # runs side by side (e.g. Audio-MAE vs MW-MAE)
    python -m evaluation.synthetic OUT_DIR         # small HEAR-format tasks for tests

Modules: tasks (registry, published numbers, task-folder checks), grids (downstream
hyperparameters), compat (fixes for heareval on current torch/Lightning), embed, predict,
report, run (the command), compare (several runs in one table), synthetic (test tasks),
store (atomic writes).
See evaluation/README.md.
"""
