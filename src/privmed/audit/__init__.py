"""``privmed audit``: canaries, empirical ε bounds beside the formal ε, and the HTML report.

- :mod:`~privmed.audit.bounds`: one-run (Steinke et al. 2023) and one-shot (Andrew et al. 2024) bounds.
- :mod:`~privmed.audit.canaries`: the auditor's canaries and secret coins; scores from what the server saw.
- :mod:`~privmed.audit.pipeline`: train with canaries, score them, bound ε, write results and the report.
- :mod:`~privmed.audit.report`: the self-contained ``report.html``.
"""
