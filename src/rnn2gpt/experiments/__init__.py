"""Experiments: runs of many models, measured side by side.

- compare/: the architecture comparison (``rnn2gpt compare``): every architecture trained under
  the same budget at matched sizes, then a report.

Above ``analysis`` (it draws with its plots and reports) and ``training`` (it trains through the
one trainer). May import every floor below ``api``.
"""
