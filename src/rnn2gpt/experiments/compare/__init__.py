"""From RNN to GPT, side by side: train each architecture under the same budget and compare.

An experiment runner (subprocesses, memory, timing): types.py (settings and results),
configs.py (one run configuration per architecture, sized to match), runner.py (training and
measuring each model), worker.py (the per-model process), report.py (Markdown and HTML).


:func:`run_comparison` builds one :class:`~rnn2gpt.config.RunConfig` per architecture from the
shipped presets ``shakespeare-char-{arch}`` (the only place an architecture's name is used), gives
them the same data, tokenizer, seed and budget (the same wall-clock time through
``train.max_time``, or the same number of training tokens through ``train.max_tokens``), resizes
them to a comparable parameter count, trains each with the one trainer
(:func:`rnn2gpt.training.train`), and measures:

- parameters; training tokens per second (the trainer's figure: evaluation time excluded);
- the best validation loss, its perplexity and bits per character (from ``metrics.jsonl``);
- generation speed: ``gen_tokens`` new tokens at batch 1 with :func:`rnn2gpt.generation.generate`
  (prompt prefill included, after a short warm-up), and the sample it produced;
- gradient flow through time: the norm of d loss / d input embedding against distance from the
  loss, on windows of the validation text (:func:`measure_gradient_flow`), drawn for all models
  on one plot (the vanishing gradient of the vanilla RNN against LSTM/GRU);
- peak memory: each training runs in its own Python process (``isolate=True``), which reports its
  RSS high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) when training ends, and
  its RSS just before training started (Python + PyTorch + data: the baseline). A fresh process
  per model is the only way to get a per-model high-water mark: the mark never goes down within a
  process. With ``isolate=False`` (faster to start, used by tests) memory is not measured.

**Comparable sizes.** Unless sizes are given, each model's width (``model.n_embd``, and
``model.n_hidden`` in proportion when set) is searched so its parameter count lands as close as
possible to a target: by default the parameter count of the GPT configuration (the
``shakespeare-char-gpt`` preset with the user's overrides) at this data's vocabulary size. Depth
is kept from the preset (or ``--set model.n_layer=...``). A model whose ``model.n_embd`` or
``model.n_hidden`` the user sets is left as given. Parameters are counted on PyTorch's ``meta``
device, so the search allocates no memory.

**Overrides.** ``section.key=value`` applies to every model; ``ARCH:section.key=value`` (e.g.
``gpt:model.n_head=4``) to one.
"""

from .configs import (
    build_configs,
    count_model_parameters,
    preset_for,
    size_to_target,
    split_overrides,
)
from .report import results_rows, write_comparison_report
from .runner import current_rss_mib, peak_rss_mib, refresh_comparison, run_comparison, run_model
from .types import TABLE_COLUMNS, CompareSettings, Comparison, ModelRun

__all__ = [
    "TABLE_COLUMNS",
    "CompareSettings",
    "Comparison",
    "ModelRun",
    "build_configs",
    "count_model_parameters",
    "current_rss_mib",
    "peak_rss_mib",
    "preset_for",
    "refresh_comparison",
    "results_rows",
    "run_comparison",
    "run_model",
    "size_to_target",
    "split_overrides",
    "write_comparison_report",
]
