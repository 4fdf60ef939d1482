"""What the stages write for people: the ablation tables (``ablation``), paired statistics
(``paired``) and their wording (``verdicts``), the published numbers (``published``), model cards
and the TSV tables DVC plots read (``cards``), the top-k explanation (``explain``), the figures
(``figures``, one module per subject) and the offline `dvc plots` page (``plots_page``).
Nothing is imported here: a stage depends only on the report modules it uses.
"""
