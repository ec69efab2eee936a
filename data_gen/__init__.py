"""data_gen: the offline TPO preference-data pipeline (``python -m data_gen run --config ...``).

Stages, one module each: ``index`` → ``sample`` → ``manipulate`` → ``caption`` → ``questions``
→ ``answer`` → ``postfilter`` → ``write``; ``pipeline`` chains them, ``cache`` makes them
resumable, ``client`` talks to OpenAI-compatible endpoints, ``merge`` joins shards and
``importers`` converts public preference formats. Prompts are in ``data_gen/prompts/``.
"""
